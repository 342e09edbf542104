//! The `pythonic` tool-call format (Llama 3.2/4, ToolACE): the output opens with a Python
//! list of calls with keyword arguments, `[get_weather(city="Paris", days=[1, 2]), f()]`,
//! optionally inside Llama 4's `<|python_start|>`..`<|python_end|>`. Argument values are
//! Python literals (strings, numbers, True/False/None, lists, tuples, dicts), turned into
//! JSON as `json.dumps(ast.literal_eval(..))` would. A list that does not parse, or output
//! that does not open with one, is content.
//!
//! The parser reads left to right and reports running out of text as `Incomplete`, never
//! as the end of a token, so a prefix of a valid list is always `Incomplete`: the stream
//! waits exactly as long as more text could still make the list valid.

use serde_json::{Map, Number, Value};

use super::json_calls::to_text;
use super::scan::{marker_at, ws_len, Marker};
use super::tool_calls::{Phase, RawCall, Step};

const PYTHON_START: &str = "<|python_start|>";
const PYTHON_END: &str = "<|python_end|>";
/// Nesting deeper than this is not a tool call (and would risk the stack).
const MAX_DEPTH: usize = 64;

pub(super) fn pythonic_step(phase: &mut Phase, buf: &str, at_end: bool) -> Step {
    match *phase {
        Phase::Text => Step::Content(buf.len()),
        Phase::Start => start_step(phase, buf, at_end),
        Phase::AfterCall => match marker_at(buf, PYTHON_END, at_end) {
            Marker::Yes => {
                *phase = Phase::Text;
                Step::Skip(PYTHON_END.len())
            }
            Marker::Maybe => Step::Wait,
            Marker::No => to_text(phase, buf),
        },
    }
}

fn start_step(phase: &mut Phase, buf: &str, at_end: bool) -> Step {
    let mut i = ws_len(buf);
    match marker_at(&buf[i..], PYTHON_START, at_end) {
        Marker::Maybe => return Step::Wait,
        Marker::Yes => {
            i += PYTHON_START.len();
            i += ws_len(&buf[i..]);
        }
        Marker::No => {}
    }
    let rest = &buf[i..];
    if rest.is_empty() && !at_end {
        return Step::Wait;
    }
    if !rest.starts_with('[') {
        return to_text(phase, buf);
    }
    match parse_call_list(rest) {
        Ok((calls, n)) => {
            *phase = Phase::AfterCall;
            Step::Calls(i + n, calls)
        }
        Err(Fail::Incomplete) if !at_end => Step::WaitClose(&[']']),
        Err(_) => to_text(phase, buf),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// The text ends before the list does.
    Incomplete,
    Invalid,
}

type Parse<T> = std::result::Result<T, Fail>;

/// `[call, ...]` at the start of `s`: the calls and the bytes the list spans.
fn parse_call_list(s: &str) -> Parse<(Vec<RawCall>, usize)> {
    let mut p = Cursor {
        s,
        pos: 0,
        depth: 0,
    };
    p.expect('[')?;
    let mut calls = Vec::new();
    loop {
        p.skip_ws();
        if p.eat(']')? {
            break;
        }
        calls.push(p.call()?);
        p.skip_ws();
        if !p.eat(',')? {
            p.expect(']')?;
            break;
        }
    }
    if calls.is_empty() {
        return Err(Fail::Invalid);
    }
    Ok((calls, p.pos))
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
    depth: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Parse<char> {
        self.s[self.pos..].chars().next().ok_or(Fail::Incomplete)
    }

    fn next(&mut self) -> Parse<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Ok(c)
    }

    /// Consumes `c` if it comes next.
    fn eat(&mut self, c: char) -> Parse<bool> {
        let found = self.peek()? == c;
        if found {
            self.pos += c.len_utf8();
        }
        Ok(found)
    }

    fn expect(&mut self, c: char) -> Parse<()> {
        if self.eat(c)? {
            Ok(())
        } else {
            Err(Fail::Invalid)
        }
    }

    fn skip_ws(&mut self) {
        self.pos += ws_len(&self.s[self.pos..]);
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    /// `name(key=value, ...)`; the name may be dotted.
    fn call(&mut self) -> Parse<RawCall> {
        let mut name = self.ident()?;
        while self.eat('.')? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        self.skip_ws();
        self.expect('(')?;
        let mut args = Map::new();
        loop {
            self.skip_ws();
            if self.eat(')')? {
                break;
            }
            let key = self.ident()?;
            self.skip_ws();
            self.expect('=')?;
            self.skip_ws();
            let value = self.value()?;
            // A repeated keyword is a SyntaxError in Python.
            if args.insert(key, value).is_some() {
                return Err(Fail::Invalid);
            }
            self.skip_ws();
            if !self.eat(',')? {
                self.expect(')')?;
                break;
            }
        }
        let arguments = serde_json::to_string(&Value::Object(args)).map_err(|_| Fail::Invalid)?;
        Ok(RawCall { name, arguments })
    }

    fn ident(&mut self) -> Parse<String> {
        let first = self.peek()?;
        if !(first.is_alphabetic() || first == '_') {
            return Err(Fail::Invalid);
        }
        let start = self.pos;
        while self.peek()?.is_alphanumeric() || self.peek()? == '_' {
            self.next()?;
        }
        Ok(self.s[start..self.pos].to_string())
    }

    fn value(&mut self) -> Parse<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Fail::Invalid);
        }
        let value = match self.peek()? {
            '"' | '\'' => self.strings().map(Value::String),
            '[' => self.sequence('[', ']').map(Value::Array),
            '(' => self.tuple(),
            '{' => self.dict(),
            '-' | '+' | '.' | '0'..='9' => self.number(),
            _ => self.keyword(),
        };
        self.depth -= 1;
        value
    }

    /// `True`, `False`, `None`.
    fn keyword(&mut self) -> Parse<Value> {
        match self.ident()?.as_str() {
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "None" => Ok(Value::Null),
            _ => Err(Fail::Invalid),
        }
    }

    /// Values between `open` and `close`, comma-separated, trailing comma allowed; also
    /// says whether a comma was seen (to tell `(x)` from `(x,)`).
    fn items(&mut self, open: char, close: char) -> Parse<(Vec<Value>, bool)> {
        self.expect(open)?;
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            self.skip_ws();
            if self.eat(close)? {
                return Ok((items, comma));
            }
            items.push(self.value()?);
            self.skip_ws();
            if !self.eat(',')? {
                self.expect(close)?;
                return Ok((items, comma));
            }
            comma = true;
        }
    }

    fn sequence(&mut self, open: char, close: char) -> Parse<Vec<Value>> {
        Ok(self.items(open, close)?.0)
    }

    /// A tuple is a JSON array; `(x)` without a comma is just `x`.
    fn tuple(&mut self) -> Parse<Value> {
        let (mut items, comma) = self.items('(', ')')?;
        if items.len() == 1 && !comma {
            return Ok(items.remove(0));
        }
        Ok(Value::Array(items))
    }

    fn dict(&mut self) -> Parse<Value> {
        self.expect('{')?;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.eat('}')? {
                break;
            }
            let key = json_key(self.value()?)?;
            self.skip_ws();
            self.expect(':')?;
            self.skip_ws();
            map.insert(key, self.value()?);
            self.skip_ws();
            if !self.eat(',')? {
                self.expect('}')?;
                break;
            }
        }
        Ok(Value::Object(map))
    }

    /// One or more adjacent string literals (Python concatenates them).
    fn strings(&mut self) -> Parse<String> {
        let mut text = self.string()?;
        loop {
            self.skip_ws();
            if !matches!(self.peek()?, '"' | '\'') {
                return Ok(text);
            }
            text.push_str(&self.string()?);
        }
    }

    /// A quoted string, single or triple quoted, with Python's escapes.
    fn string(&mut self) -> Parse<String> {
        let quote = self.next()?;
        let triple: String = [quote; 3].iter().collect();
        let after_one = self.rest();
        let long = after_one.starts_with(&triple[1..]);
        // `""` at the end of the text may be an empty string or the start of `"""`.
        if !long && after_one.len() == 1 && after_one.starts_with(quote) {
            return Err(Fail::Incomplete);
        }
        if long {
            self.pos += 2;
        }
        let mut text = String::new();
        loop {
            if long && self.rest().starts_with(triple.as_str()) {
                self.pos += 3;
                return Ok(text);
            }
            // Possibly a closing `"""` cut short.
            if long && triple.starts_with(self.rest()) && !self.rest().is_empty() {
                return Err(Fail::Incomplete);
            }
            match self.next()? {
                c if c == quote && !long => return Ok(text),
                '\n' if !long => return Err(Fail::Invalid),
                '\\' => self.escape(&mut text)?,
                c => text.push(c),
            }
        }
    }

    fn escape(&mut self, text: &mut String) -> Parse<()> {
        let c = self.next()?;
        let simple = match c {
            '\n' => return Ok(()), // line continuation
            '\\' | '\'' | '"' => c,
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            'x' => self.hex_char(2)?,
            'u' => self.hex_char(4)?,
            'U' => self.hex_char(8)?,
            '0'..='7' => self.octal_char(c)?,
            _ => {
                // Python keeps unknown escapes as written.
                text.push('\\');
                c
            }
        };
        text.push(simple);
        Ok(())
    }

    fn hex_char(&mut self, digits: usize) -> Parse<char> {
        let mut code = 0u32;
        for _ in 0..digits {
            let d = self.next()?.to_digit(16).ok_or(Fail::Invalid)?;
            code = code * 16 + d;
        }
        char::from_u32(code).ok_or(Fail::Invalid)
    }

    /// Up to three octal digits, the first already read.
    fn octal_char(&mut self, first: char) -> Parse<char> {
        let mut code = first.to_digit(8).ok_or(Fail::Invalid)?;
        for _ in 0..2 {
            match self.peek()?.to_digit(8) {
                Some(d) => {
                    self.next()?;
                    code = code * 8 + d;
                }
                None => break,
            }
        }
        char::from_u32(code).ok_or(Fail::Invalid)
    }

    /// An int or float literal with an optional sign; `_` separators allowed.
    fn number(&mut self) -> Parse<Value> {
        let mut text = String::new();
        if matches!(self.peek()?, '-' | '+') {
            if self.next()? == '-' {
                text.push('-');
            }
            self.skip_ws();
        }
        let mut float = false;
        let mut digits = 0;
        loop {
            match self.peek()? {
                c @ '0'..='9' => {
                    digits += 1;
                    text.push(c);
                }
                '_' => {}
                '.' if !float => {
                    float = true;
                    text.push('.');
                }
                'e' | 'E' if digits > 0 => {
                    self.next()?;
                    text.push('e');
                    if matches!(self.peek()?, '-' | '+') {
                        text.push(self.next()?);
                    }
                    float = true;
                    continue;
                }
                _ => break,
            }
            self.next()?;
        }
        if digits == 0 {
            return Err(Fail::Invalid);
        }
        number_value(&text, float)
    }
}

fn number_value(text: &str, float: bool) -> Parse<Value> {
    if !float {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Ok(Value::Number(u.into()));
        }
    }
    let f: f64 = text.parse().map_err(|_| Fail::Invalid)?;
    Number::from_f64(f).map(Value::Number).ok_or(Fail::Invalid)
}

/// A dict key as `json.dumps` writes it: strings as they are, scalars as JSON text.
fn json_key(key: Value) -> Parse<String> {
    match key {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".to_string()),
        _ => Err(Fail::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Parse<Vec<(String, Value)>> {
        let (calls, n) = parse_call_list(s)?;
        assert_eq!(n, s.len(), "whole list consumed");
        Ok(calls
            .into_iter()
            .map(|c| (c.name, serde_json::from_str(&c.arguments).unwrap()))
            .collect())
    }

    #[test]
    fn literals_become_json() {
        let calls = parse(
            "[book(people=[{'name': 'Ann', 'vip': True}, {'name': \"Bo\", 'age': None}], \
             price=-12.5e2, n=1_000, t=(1, 'a'), one=(2), d={1: 'x', False: 0}, e={}, \
             s='it\\'s \\u00e9\\x41\\n' \"+more\", big=18446744073709551615, f=.5)]",
        )
        .unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "book");
        assert_eq!(
            calls[0].1,
            json!({
                "people": [{"name": "Ann", "vip": true}, {"name": "Bo", "age": null}],
                "price": -1250.0, "n": 1000, "t": [1, "a"], "one": 2,
                "d": {"1": "x", "false": 0}, "e": {},
                "s": "it's \u{e9}A\n+more", "big": 18446744073709551615u64, "f": 0.5
            })
        );
    }

    #[test]
    fn several_calls_and_triple_quotes() {
        let calls = parse("[a.b(x=\"\"\"line1\nline2\"\"\"), c(), d(y='',)]").unwrap();
        let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["a.b", "c", "d"]);
        assert_eq!(calls[0].1, json!({"x": "line1\nline2"}));
        assert_eq!(calls[1].1, json!({}));
        assert_eq!(calls[2].1, json!({"y": ""}));
    }

    #[test]
    fn invalid_lists() {
        for bad in [
            "[]",
            "[f(1)]",
            "[f(x)]",
            "[f(x=)]",
            "[f(x=1, x=2)]",
            "[not a call]",
            "[f(x=foo)]",
            "[f(x='a\nb')]",
            "[f(x={[1]: 2})]",
            "[f(x=1j)]",
            "[f(x=0x10)]",
            "[f(x=1e999)]",
        ] {
            assert_eq!(parse_call_list(bad).err(), Some(Fail::Invalid), "{bad}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_list_is_incomplete() {
        let text = "[f(a='x\\'y', b=\"\"\"q\"\"\", c=[1, -2.5e+3, (None,)], d={'k': True}), g()]";
        assert!(parse_call_list(text).is_ok());
        for (cut, _) in text.char_indices() {
            assert_eq!(
                parse_call_list(&text[..cut]).err(),
                Some(Fail::Incomplete),
                "prefix {:?}",
                &text[..cut]
            );
        }
    }

    #[test]
    fn deep_nesting_is_invalid_not_a_crash() {
        let deep = format!("[f(x={}{})]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_call_list(&deep).err(), Some(Fail::Invalid));
    }
}

//! llama.cpp's GBNF grammars, converted to llguidance's Lark dialect.
//!
//! llguidance reads Lark only. GBNF (`root ::= "a" rule* [0-9]{1,3}`) is parsed here into a
//! small tree and written back out as Lark with the same language:
//! - each rule `name ::= body` becomes the Lark rule `g-name: body` (Lark rule names are
//!   lower case; a clash after lower-casing gets a numeric suffix), and `start: g-root`;
//! - `"literal"` becomes a Lark string (escapes decoded, then re-encoded for Lark);
//! - `[a-z]`, `[^"\\]` become one-character regexes with every character written as
//!   `\x{..}`, so no character of the class needs escaping in the `/.../` literal;
//! - `.` is any character (newline included, as in llama.cpp);
//! - groups, alternatives, `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`, `{,n}` keep their form;
//! - token references `<[123]>`, `<|name|>` pass through (Lark has the same syntax).
//!
//! A rule ends where the next `name ::=` starts, so both one-line rules and bodies spread
//! over several lines are read. `#` starts a comment outside literals and classes.

/// Whether `grammar` is GBNF: some line starts with a rule name followed by `::=`.
pub fn is_gbnf(grammar: &str) -> bool {
    grammar.lines().any(|line| {
        let line = line.trim_start();
        let name_len = line
            .char_indices()
            .find(|&(_, c)| !is_name_char(c))
            .map(|(i, _)| i)
            .unwrap_or(line.len());
        name_len > 0 && line[name_len..].trim_start().starts_with("::=")
    })
}

/// Converts a GBNF grammar to an equivalent Lark grammar for llguidance. The error names
/// the line and column of the problem.
pub fn gbnf_to_lark(src: &str) -> Result<String, String> {
    let rules = Parser::new(src).parse_grammar()?;
    let mut names: Vec<(String, String)> = Vec::new(); // GBNF name -> Lark name
    for (name, _) in &rules {
        if names.iter().any(|(n, _)| n == name) {
            return Err(format!("rule `{name}` is defined more than once"));
        }
        let base = format!(
            "g-{}",
            name.to_ascii_lowercase()
                .chars()
                .map(|c| if c == '_' { '-' } else { c })
                .collect::<String>()
        );
        let mut lark = base.clone();
        let mut k = 2;
        while names.iter().any(|(_, l)| *l == lark) {
            lark = format!("{base}-{k}");
            k += 1;
        }
        names.push((name.clone(), lark));
    }
    let lookup = |name: &str| -> Result<String, String> {
        names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .ok_or_else(|| format!("undefined rule `{name}`"))
    };
    let root = lookup("root").map_err(|_| "the grammar has no `root` rule".to_string())?;
    let mut out = format!("start: {root}\n");
    for (name, body) in &rules {
        out.push_str(&lookup(name)?);
        out.push_str(": ");
        write_alts(&mut out, body, &lookup)?;
        out.push('\n');
    }
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Alternatives, each a sequence of repeated atoms.
type Alts = Vec<Vec<Item>>;

#[derive(Debug)]
struct Item {
    atom: Atom,
    rep: Option<Rep>,
}

#[derive(Debug)]
enum Atom {
    Literal(String),
    /// `(negated, ranges)`.
    Class(bool, Vec<(char, char)>),
    Any,
    Rule(String),
    Token(String),
    Group(Alts),
}

#[derive(Debug)]
enum Rep {
    Star,
    Plus,
    Opt,
    Range(u32, Option<u32>),
}

/// Deepest group nesting accepted (the parser recurses per level).
const MAX_DEPTH: usize = 200;

struct Parser {
    s: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(src: &str) -> Self {
        Parser {
            s: src.chars().collect(),
            pos: 0,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> String {
        let before = &self.s[..self.pos.min(self.s.len())];
        let line = before.iter().filter(|&&c| c == '\n').count() + 1;
        let col = before.iter().rev().take_while(|&&c| c != '\n').count() + 1;
        format!("GBNF line {line}, column {col}: {msg}")
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.s.get(self.pos + k).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
            } else if c.is_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Whether a rule definition `name ::=` starts here.
    fn at_rule_start(&self) -> bool {
        let mut i = self.pos;
        while self.s.get(i).is_some_and(|&c| is_name_char(c)) {
            i += 1;
        }
        if i == self.pos {
            return false;
        }
        while self.s.get(i).is_some_and(|&c| c == ' ' || c == '\t') {
            i += 1;
        }
        self.s.get(i..i + 3) == Some(&[':', ':', '='][..])
    }

    fn parse_name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err(match self.peek() {
                Some(c) => format!("expected a rule name, found {c:?}"),
                None => "expected a rule name, found the end".to_string(),
            }));
        }
        Ok(self.s[start..self.pos].iter().collect())
    }

    fn parse_grammar(&mut self) -> Result<Vec<(String, Alts)>, String> {
        let mut rules = Vec::new();
        loop {
            self.skip_ws();
            if self.peek().is_none() {
                break;
            }
            let name = self.parse_name()?;
            self.skip_ws();
            if self.s.get(self.pos..self.pos + 3) != Some(&[':', ':', '='][..]) {
                return Err(self.err(format!("expected `::=` after rule name `{name}`")));
            }
            self.pos += 3;
            let body = self.parse_alts(0)?;
            // The body stops at the end, at the next rule, or at a stray `)`.
            if self.peek() == Some(')') {
                return Err(self.err("unbalanced `)`"));
            }
            rules.push((name, body));
        }
        if rules.is_empty() {
            return Err("the GBNF grammar has no rules".to_string());
        }
        Ok(rules)
    }

    /// Alternatives up to `)`, the next rule definition, or the end.
    fn parse_alts(&mut self, depth: usize) -> Result<Alts, String> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("groups nested deeper than {MAX_DEPTH}")));
        }
        let mut alts = vec![self.parse_seq(depth)?];
        loop {
            self.skip_ws();
            if self.peek() == Some('|') {
                self.pos += 1;
                alts.push(self.parse_seq(depth)?);
            } else {
                return Ok(alts);
            }
        }
    }

    fn parse_seq(&mut self, depth: usize) -> Result<Vec<Item>, String> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None | Some('|') | Some(')') => return Ok(items),
                _ if depth == 0 && self.at_rule_start() => {
                    let on_new_line = self.s[..self.pos]
                        .iter()
                        .rev()
                        .take_while(|c| c.is_whitespace())
                        .any(|&c| c == '\n');
                    if !on_new_line {
                        return Err(self.err("a rule definition must start on its own line"));
                    }
                    return Ok(items);
                }
                _ => {}
            }
            let atom = self.parse_atom(depth)?;
            let mut item = Item { atom, rep: None };
            loop {
                self.skip_ws();
                let rep = match self.peek() {
                    Some('*') => Rep::Star,
                    Some('+') => Rep::Plus,
                    Some('?') => Rep::Opt,
                    Some('{') => {
                        self.pos += 1;
                        self.parse_braces()?
                    }
                    _ => break,
                };
                if !matches!(rep, Rep::Range(..)) {
                    self.pos += 1;
                }
                if item.rep.is_some() {
                    // `a*+` and the like: repeat the repeated item.
                    item = Item {
                        atom: Atom::Group(vec![vec![item]]),
                        rep: None,
                    };
                }
                item.rep = Some(rep);
            }
            items.push(item);
        }
    }

    /// After `{`: `m}`, `m,}`, `m,n}` or `,n}`.
    fn parse_braces(&mut self) -> Result<Rep, String> {
        self.skip_ws();
        let min = self.parse_number()?;
        self.skip_ws();
        let rep = if self.peek() == Some(',') {
            self.pos += 1;
            self.skip_ws();
            let max = self.parse_number()?;
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    return Err(self.err(format!("repetition {{{a},{b}}}: {a} > {b}")));
                }
            }
            Rep::Range(min.unwrap_or(0), max)
        } else {
            let n = min.ok_or_else(|| self.err("expected a number in `{...}`"))?;
            Rep::Range(n, Some(n))
        };
        self.skip_ws();
        if self.peek() != Some('}') {
            return Err(self.err("expected `}` to close the repetition"));
        }
        self.pos += 1;
        Ok(rep)
    }

    fn parse_number(&mut self) -> Result<Option<u32>, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return Ok(None);
        }
        let text: String = self.s[start..self.pos].iter().collect();
        text.parse()
            .map(Some)
            .map_err(|_| self.err(format!("repetition count {text} is too large")))
    }

    fn parse_atom(&mut self, depth: usize) -> Result<Atom, String> {
        let c = self.peek().unwrap();
        match c {
            '"' => {
                self.pos += 1;
                let mut lit = String::new();
                loop {
                    match self.peek() {
                        None | Some('\n') => return Err(self.err("unterminated string literal")),
                        Some('"') => {
                            self.pos += 1;
                            return Ok(Atom::Literal(lit));
                        }
                        Some(_) => lit.push(self.parse_char()?),
                    }
                }
            }
            '[' => {
                self.pos += 1;
                let negated = self.peek() == Some('^');
                if negated {
                    self.pos += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated character class")),
                        Some(']') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => {
                            let lo = self.parse_char()?;
                            let hi = if self.peek() == Some('-')
                                && self.peek_at(1).is_some_and(|c| c != ']')
                            {
                                self.pos += 1;
                                let hi = self.parse_char()?;
                                if hi < lo {
                                    return Err(self.err(format!(
                                        "character range {lo:?}-{hi:?} is reversed"
                                    )));
                                }
                                hi
                            } else {
                                lo
                            };
                            ranges.push((lo, hi));
                        }
                    }
                }
                if ranges.is_empty() && !negated {
                    return Err(self.err("empty character class `[]` matches nothing"));
                }
                Ok(Atom::Class(negated, ranges))
            }
            '.' => {
                self.pos += 1;
                Ok(Atom::Any)
            }
            '(' => {
                self.pos += 1;
                let alts = self.parse_alts(depth + 1)?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                Ok(Atom::Group(alts))
            }
            '<' => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != '>' && !c.is_whitespace()) {
                    self.pos += 1;
                }
                if self.peek() != Some('>') {
                    return Err(self.err("unterminated token reference `<...>`"));
                }
                self.pos += 1;
                Ok(Atom::Token(self.s[start..self.pos].iter().collect()))
            }
            '!' => Err(self.err("negated token references `!<...>` are not supported")),
            c if is_name_char(c) => Ok(Atom::Rule(self.parse_name()?)),
            c => Err(self.err(format!("unexpected {c:?}"))),
        }
    }

    /// One character of a literal or class, with llama.cpp's escapes.
    fn parse_char(&mut self) -> Result<char, String> {
        let c = self.peek().unwrap();
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self
            .peek()
            .ok_or_else(|| self.err("unfinished escape at the end"))?;
        self.pos += 1;
        let hex = |p: &mut Parser, n: usize| -> Result<char, String> {
            let digits: String = p.s.get(p.pos..p.pos + n).unwrap_or(&[]).iter().collect();
            let ok = digits.chars().count() == n && digits.chars().all(|c| c.is_ascii_hexdigit());
            let code = if ok {
                u32::from_str_radix(&digits, 16).ok()
            } else {
                None
            };
            match code.and_then(char::from_u32) {
                Some(ch) => {
                    p.pos += n;
                    Ok(ch)
                }
                None => Err(p.err(format!(
                    "escape `\\{e}` needs {n} hex digits of a character"
                ))),
            }
        };
        match e {
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            'U' => hex(self, 8),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            '0' => Ok('\0'),
            c if c.is_ascii_alphanumeric() => Err(self.err(format!("unknown escape `\\{c}`"))),
            c => Ok(c),
        }
    }
}

fn write_alts(
    out: &mut String,
    alts: &Alts,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    for (i, seq) in alts.iter().enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        if seq.is_empty() {
            out.push_str("\"\"");
        }
        for (j, item) in seq.iter().enumerate() {
            if j > 0 {
                out.push(' ');
            }
            write_item(out, item, lookup)?;
        }
    }
    Ok(())
}

fn write_item(
    out: &mut String,
    item: &Item,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    match &item.atom {
        Atom::Literal(s) => write_lark_string(out, s),
        Atom::Class(negated, ranges) => {
            out.push_str("/[");
            if *negated {
                out.push('^');
            }
            for &(lo, hi) in ranges {
                out.push_str(&format!("\\x{{{:x}}}", lo as u32));
                if hi != lo {
                    out.push_str(&format!("-\\x{{{:x}}}", hi as u32));
                }
            }
            if *negated && ranges.is_empty() {
                // `[^]`: any character.
                out.push_str("\\x{0}-\\x{10ffff}");
            }
            out.push_str("]/");
        }
        Atom::Any => out.push_str("/(?s:.)/"),
        Atom::Rule(name) => out.push_str(&lookup(name)?),
        Atom::Token(t) => out.push_str(t),
        Atom::Group(alts) => {
            out.push('(');
            write_alts(out, alts, lookup)?;
            out.push(')');
        }
    }
    match item.rep {
        None => {}
        Some(Rep::Star) => out.push('*'),
        Some(Rep::Plus) => out.push('+'),
        Some(Rep::Opt) => out.push('?'),
        Some(Rep::Range(m, None)) => out.push_str(&format!("{{{m},}}")),
        Some(Rep::Range(m, Some(n))) => out.push_str(&format!("{{{m},{n}}}")),
    }
    Ok(())
}

/// A Lark string literal (JSON escapes) for `s`.
pub(crate) fn write_lark_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_gbnf() {
        assert!(is_gbnf("root ::= \"a\""));
        assert!(is_gbnf("# c\n  json-value   ::= x\nroot::=y"));
        assert!(!is_gbnf("start: \"::=\""));
        assert!(!is_gbnf("start: a\na: \"x\" // ::= in a comment"));
    }

    #[test]
    fn converts_rules_literals_classes_and_repetitions() {
        let g = r#"
# a comment
root   ::= "say: " word ("," ws word){0,3} "\x21\n"
word ::= [a-zA-Z_]+ | "\"q\"" | Other
Other ::= [^\]\\]? . "" <|im_end|>
ws ::= [ \t]*
"#;
        let lark = gbnf_to_lark(g).unwrap();
        let expected = concat!(
            "start: g-root\n",
            "g-root: \"say: \" g-word (\",\" g-ws g-word){0,3} \"!\\n\"\n",
            "g-word: /[\\x{61}-\\x{7a}\\x{41}-\\x{5a}\\x{5f}]/+ | \"\\\"q\\\"\" | g-other\n",
            "g-other: /[^\\x{5d}\\x{5c}]/? /(?s:.)/ \"\" <|im_end|>\n",
            "g-ws: /[\\x{20}\\x{9}]/*\n",
        );
        assert_eq!(lark, expected);
    }

    #[test]
    fn multi_line_bodies_and_name_clashes() {
        let g = "root ::= (\n  a |\n  A\n)\na ::= \"x\"\nA ::= \"y\"{2,}";
        let lark = gbnf_to_lark(g).unwrap();
        assert_eq!(
            lark,
            "start: g-root\ng-root: (g-a | g-a-2)\ng-a: \"x\"\ng-a-2: \"y\"{2,}\n"
        );
    }

    #[test]
    fn errors_name_the_place() {
        let e = gbnf_to_lark("root ::= \"a").unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("unterminated string"),
            "{e}"
        );
        let e = gbnf_to_lark("root ::= x\n").unwrap_err();
        assert!(e.contains("undefined rule `x`"), "{e}");
        let e = gbnf_to_lark("item ::= \"a\"").unwrap_err();
        assert!(e.contains("no `root` rule"), "{e}");
        let e = gbnf_to_lark("root ::= [z-a]").unwrap_err();
        assert!(e.contains("reversed"), "{e}");
        let e = gbnf_to_lark("root ::= \"a\"\nroot ::= \"b\"").unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        let e = gbnf_to_lark("root ::= \"\\q\"").unwrap_err();
        assert!(e.contains("unknown escape"), "{e}");
        let e = gbnf_to_lark(&format!("root ::= {}\"a\"", "(".repeat(500))).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
    }
}

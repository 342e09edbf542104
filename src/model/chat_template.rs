//! Chat templates rendered with minijinja, set up to behave as Hugging Face `transformers`
//! renders them (`apply_chat_template(..., tokenize=False)`):
//!
//! - `trim_blocks` and `lstrip_blocks` on, trailing newline dropped, no auto-escaping;
//! - globals `raise_exception(msg)` (the render fails with `msg`) and `strftime_now(fmt)`;
//! - the `tojson` filter is HF's: `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)`, so `", "` / `": "` separators and no HTML escaping;
//! - Python methods on strings, lists and dicts (`.strip()`, `.items()`, `.get()`, ...) via
//!   `minijinja_contrib::pycompat`;
//! - `{{ none }}` / `{{ true }}` print as Python prints them (`None`, `True`), floats in
//!   Python's `repr` form;
//! - HF's `{% generation %}...{% endgeneration %}` (assistant-mask marker) is accepted and
//!   renders its body unchanged.
//!
//! The context holds `messages`, `tools`, `documents`, `add_generation_prompt`, the special
//! tokens `bos_token` / `eos_token` (when known) and every `chat_template_kwargs` entry.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Output, State};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception` raises, found again in the error's source chain.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source`. A syntax error is `Error::Template` with minijinja's description
    /// (what went wrong and the line).
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let prepared = rewrite_generation_tags(source);
        env.add_template_owned(TEMPLATE_NAME, prepared)
            .map_err(|e| Error::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages` (a JSON list of `{role, content, ...}`).
    ///
    /// `tools` is the list of tool schemas (`None` renders as Python's `None`), `extra` the
    /// request's `chat_template_kwargs`: every entry is visible to the template (including
    /// `documents`); they may override `bos_token`/`eos_token` but not `messages`, `tools`
    /// or `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        tools: Option<&Value>,
        extra: Option<&Map<String, Value>>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, JValue> = BTreeMap::new();
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token".into(), JValue::from(b.as_str()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token".into(), JValue::from(e.as_str()));
        }
        ctx.insert("documents".into(), JValue::from(()));
        if let Some(extra) = extra {
            for (k, v) in extra {
                ctx.insert(k.clone(), JValue::from_serialize(v));
            }
        }
        ctx.insert("messages".into(), JValue::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            match tools {
                Some(t) => JValue::from_serialize(t),
                None => JValue::from(()),
            },
        );
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(describe(&e)))?;
        tmpl.render(JValue::from(ctx)).map_err(|e| {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = src {
                if let Some(raised) = err.downcast_ref::<RaisedException>() {
                    return Error::Template(raised.0.clone());
                }
                src = err.source();
            }
            Error::Template(describe(&e))
        })
    }
}

/// One line: kind, detail and location of a minijinja error.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone())
            .with_source(RaisedException(msg)),
    )
}

fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime_utc(&fmt, secs)
}

/// Prints values as Python's `str()` would, so templates render as under Jinja2.
fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &JValue,
) -> std::result::Result<(), minijinja::Error> {
    let fmt_err = |_| minijinja::Error::new(ErrorKind::WriteFailure, "formatting failed");
    match value.kind() {
        ValueKind::None => out.write_str("None").map_err(fmt_err),
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(fmt_err),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.write_str(&python_float_repr(f)).map_err(fmt_err),
            Err(_) => minijinja::escape_formatter(out, state, value),
        },
        ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_repr(&mut s, value, 0)?;
            out.write_str(&s).map_err(fmt_err)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr` of a value (lists and dicts print their items this way).
fn python_repr(
    out: &mut String,
    v: &JValue,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply to print",
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Undefined => {}
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if !v.is_integer() => out.push_str(&python_float_repr(
            f64::try_from(v.clone()).unwrap_or(f64::NAN),
        )),
        ValueKind::String => python_str_repr(out, v.as_str().unwrap_or("")),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &k, depth + 1)?;
                out.push_str(": ");
                python_repr(out, &v.get_item(&k)?, depth + 1)?;
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn python_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !python_printable(c) => {
                let n = c as u32;
                let _ = if n <= 0xff {
                    write!(out, "\\x{n:02x}")
                } else if n <= 0xffff {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// An approximation of `str.isprintable` for one character: controls, separators other
/// than the space, and common format characters are not printable.
fn python_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{2064}' | '\u{3000}' | '\u{feff}'))
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// i.e. Python's `json.dumps` with those arguments (positional or keyword).
fn tojson(
    value: &JValue,
    args: &[JValue],
    kwargs: Kwargs,
) -> std::result::Result<JValue, minijinja::Error> {
    if args.len() > 4 {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 positional arguments",
        ));
    }
    let pick = |i: usize, name: &str| -> std::result::Result<Option<JValue>, minijinja::Error> {
        let kw: Option<JValue> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(i).cloned()))
    };
    let ensure_ascii = pick(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            if let Some(s) = v.as_str() {
                Some(s.to_string())
            } else if let Some(n) = v.as_i64() {
                Some(" ".repeat(n.clamp(0, 64) as usize))
            } else {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        }
    };
    let (item_sep, key_sep) = match pick(2, "separators")? {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<JValue> = v.try_iter()?.collect();
            match (
                parts.first().and_then(|p| p.as_str()),
                parts.get(1).and_then(|p| p.as_str()),
            ) {
                (Some(a), Some(b)) if parts.len() == 2 => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = pick(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(JValue::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

const MAX_JSON_DEPTH: usize = 256;

fn write_json(
    out: &mut String,
    v: &JValue,
    o: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float_repr_json(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), o.ensure_ascii),
        ValueKind::Bytes => {
            let bytes = v.as_bytes().unwrap_or(&[]);
            write_json_str(out, &String::from_utf8_lossy(bytes), o.ensure_ascii)
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort_by_key(json_key);
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json_str(out, &json_key(k), o.ensure_ascii);
                out.push_str(&o.key_sep);
                let item = v.get_item(k)?;
                write_json(out, &item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Plain => {
            let items: Vec<JValue> = match v.try_iter() {
                Ok(it) => it.collect(),
                Err(_) => {
                    write_json_str(out, &v.to_string(), o.ensure_ascii);
                    return Ok(());
                }
            };
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => write_json_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

/// Python's `json.dumps` turns non-string keys into strings this way.
fn json_key(k: &JValue) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or("").to_string(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number if !k.is_integer() => {
            python_float_repr_json(f64::try_from(k.clone()).unwrap_or(f64::NAN))
        }
        _ => k.to_string(),
    }
}

/// A JSON string as Python writes it (`ensure_ascii` escapes everything outside ' '..='~').
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(float)` in Python: shortest round-trip digits, exponent form when the exponent is
/// below -4 or at least 16.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-5", "-1e16"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if f != 0.0 && !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// Floats inside `json.dumps`: like `repr`, but NaN and infinities as JavaScript spells them.
fn python_float_repr_json(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        python_float_repr(f)
    }
}

/// Turns HF's `{% generation %}` / `{% endgeneration %}` (which only mark assistant tokens
/// for masks) into `{% if true %}` / `{% endif %}`, keeping whitespace-control markers.
fn rewrite_generation_tags(src: &str) -> String {
    if !src.contains("generation") {
        return src.to_string();
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open_ctl, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (Some(c), &inner[1..]),
            _ => (None, inner),
        };
        let (body, close_ctl) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], Some(c)),
            _ => (body, None),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                if let Some(c) = open_ctl {
                    out.push(c);
                }
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                if let Some(c) = close_ctl {
                    out.push(c);
                }
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Python's `strftime` for a UTC time given as seconds since the Unix epoch. Supports
/// `%a %A %b %B %c %d %e %F %H %I %j %m %M %p %S %T %u %w %y %Y %z %Z %%`, glibc's `-`
/// flag (no padding, e.g. `%-d`); other sequences are copied through.
pub fn strftime_utc(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match spec {
            'a' => out.push_str(&WEEKDAYS[weekday][..3]),
            'A' => out.push_str(WEEKDAYS[weekday]),
            'b' | 'h' => out.push_str(&MONTHS[month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[month as usize - 1]),
            'c' => {
                let _ = write!(
                    out,
                    "{} {} {:>2} {:02}:{:02}:{:02} {}",
                    &WEEKDAYS[weekday][..3],
                    &MONTHS[month as usize - 1][..3],
                    day,
                    hour,
                    minute,
                    second,
                    year
                );
            }
            'd' => num(&mut out, day, 2),
            'e' => {
                if no_pad {
                    let _ = write!(out, "{day}");
                } else {
                    let _ = write!(out, "{day:>2}");
                }
            }
            'F' => {
                let _ = write!(out, "{year:04}-{month:02}-{day:02}");
            }
            'H' => num(&mut out, hour, 2),
            'I' => num(&mut out, hour12, 2),
            'j' => num(&mut out, yday, 3),
            'm' => num(&mut out, month, 2),
            'M' => num(&mut out, minute, 2),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'S' => num(&mut out, second, 2),
            'T' => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            'u' => {
                let _ = write!(out, "{}", if weekday == 0 { 7 } else { weekday });
            }
            'w' => {
                let _ = write!(out, "{weekday}");
            }
            'y' => num(&mut out, year.rem_euclid(100), 2),
            'Y' => {
                let _ = write!(out, "{year}");
            }
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

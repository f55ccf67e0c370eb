//! Located errors and the shared TOML parse: every configuration file
//! (node, edge, follower) is deserialized with unknown keys denied, then
//! validated, and each error names its file, line and dotted key.

use std::fmt;

/// A configuration that cannot be used, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line, when the error has a place.
    pub line: Option<usize>,
    /// Dotted key (`heartbeat.interval`, `service[1].name`), when known.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

pub(super) fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turn serde's path (`service.1.name`) into the user's (`service[1].name`).
fn dotted(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Find where a dotted key sits in the document, for errors found after
/// deserialisation (validation). `service[1].name` style paths are understood;
/// when a part is missing, the nearest enclosing key is given.
pub(super) fn locate(src: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut best = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.get_key_value(name) else {
            break;
        };
        best = k.span().map(|s| s.start).or(best);
        let next = match (v, index) {
            (toml_edit::Item::ArrayOfTables(a), Some(i)) => a.get(i).map(|t| {
                best = t.span().map(|s| s.start).or(best);
                t as &dyn toml_edit::TableLike
            }),
            (v, None) => v.as_table_like(),
            _ => None,
        };
        match next {
            Some(t) => table = t,
            None => break,
        }
    }
    best
}

/// Deserialize `src` (the text of `file`) into `T`, then run `validate`;
/// every error located by line and dotted key. Shared by the node's and the
/// edge's files.
pub(crate) fn parse_file<T: serde::de::DeserializeOwned>(
    file: &str,
    src: &str,
    validate: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ConfigError> {
    let err = |line, key, message: String| ConfigError {
        file: file.to_owned(),
        line,
        key,
        message,
    };
    let de = toml::de::Deserializer::parse(src).map_err(|e| {
        let span = e.span();
        let mut message = e.message().to_owned();
        // toml says "duplicate key" and points at it: name it.
        if let Some(s) = span
            .clone()
            .filter(|_| message.starts_with("duplicate key"))
        {
            if let Some(k) = src.get(s).map(str::trim).filter(|k| !k.is_empty()) {
                message = format!("duplicate key `{k}`: each key may appear once in a table");
            }
        }
        err(span.map(|s| line_of(src, s.start)), None, message)
    })?;
    let cfg: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = dotted(e.path());
        let inner = e.inner();
        let line = inner.span().map(|s| line_of(src, s.start)).or_else(|| {
            key.as_deref()
                .and_then(|k| locate(src, k))
                .map(|o| line_of(src, o))
        });
        let raw = key.as_deref().and_then(|k| value_at(src, k));
        err(line, key, explain(inner.message(), raw.as_deref()))
    })?;
    validate(&cfg).map_err(|(key, message)| {
        let line = locate(src, &key).map(|o| line_of(src, o));
        err(line, Some(key), message)
    })?;
    Ok(cfg)
}

/// The string value written at a dotted key, when it is one.
fn value_at(src: &str, key: &str) -> Option<String> {
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        item = item.get(name)?;
        if let Some(i) = index {
            // Arrays and arrays of tables alike.
            item = item.get(i)?;
        }
    }
    item.as_str().map(str::to_owned)
}

/// Why `raw` is not an `IP:port` socket address, in the admin's terms.
fn socket_address_problem(raw: &str) -> String {
    let example = "write an IP address and a port, such as \"10.0.0.1:5060\" or \"[::1]:5060\"";
    let Some((host, port)) = raw.rsplit_once(':') else {
        return format!("`{raw}` has no port: {example}");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u32>() {
        Ok(p) if p > 65535 => return format!("port {p} of `{raw}` is over 65535: {example}"),
        Err(_) => return format!("`{port}` in `{raw}` is not a port number: {example}"),
        _ => {}
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        return format!(
            "`{host}` in `{raw}` is not an IP address; names are not resolved (a DNS failure must not stop a failover): {example}"
        );
    }
    format!("`{raw}` is not an address: {example}")
}

/// Serde's messages, made to say what is expected in this file's terms.
fn explain(msg: &str, raw: Option<&str>) -> String {
    if msg.contains("invalid socket address syntax") {
        return match raw {
            Some(raw) => socket_address_problem(raw),
            None => format!("{msg}; expected an IP address and port such as \"10.0.0.1:5060\""),
        };
    }
    if msg.contains("expected a duration")
        || msg.contains("time unit")
        || msg.contains("invalid duration")
        || msg.contains("number is expected")
        || msg.contains("unknown unit")
    {
        format!("{msg}; expected a duration such as \"200ms\", \"3s\" or \"10m\"")
    } else {
        msg.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_say_what_is_wrong() {
        let m = socket_address_problem("pbx.example.com:5060");
        assert!(
            m.contains("`pbx.example.com`") && m.contains("not an IP address"),
            "{m}"
        );
        let m = socket_address_problem("10.0.0.1:99999");
        assert!(m.contains("port 99999") && m.contains("65535"), "{m}");
        let m = socket_address_problem("10.0.0.1");
        assert!(m.contains("no port"), "{m}");
        let m = socket_address_problem("10.0.0.1:sip");
        assert!(
            m.contains("`sip`") && m.contains("not a port number"),
            "{m}"
        );
    }

    #[test]
    fn the_raw_value_is_found_by_dotted_key() {
        let src = "[a]\nx = \"1.2.3.4:5\"\n[[b]]\ny = \"one\"\n[[b]]\ny = \"two\"\n";
        assert_eq!(value_at(src, "a.x").as_deref(), Some("1.2.3.4:5"));
        assert_eq!(value_at(src, "b[1].y").as_deref(), Some("two"));
        assert_eq!(value_at(src, "a.missing"), None);
    }
}

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
        err(
            e.span().map(|s| line_of(src, s.start)),
            None,
            e.message().to_owned(),
        )
    })?;
    let cfg: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = dotted(e.path());
        let inner = e.inner();
        let line = inner.span().map(|s| line_of(src, s.start)).or_else(|| {
            key.as_deref()
                .and_then(|k| locate(src, k))
                .map(|o| line_of(src, o))
        });
        err(line, key, explain(inner.message()))
    })?;
    validate(&cfg).map_err(|(key, message)| {
        let line = locate(src, &key).map(|o| line_of(src, o));
        err(line, Some(key), message)
    })?;
    Ok(cfg)
}

/// Serde's messages, made to say what is expected in this file's terms.
fn explain(msg: &str) -> String {
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

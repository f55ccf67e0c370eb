//! The PBX settings that make phones fail over fast (XiVO's "Resilience Administration", "Automatic
//! Configuration Change"), as pure text edits: a file's text in, the edited
//! text out. Writing, keeping the original and restoring it is the
//! runtime's job.
//!
//! - SIP registration expiry: a phone whose registration expires every 2
//!   minutes re-registers (and finds the surviving node) within 2 minutes,
//!   not within the hour Asterisk allows by default. For chan_sip the
//!   `[general]` section of `sip.conf` gets `minexpiry`, `maxexpiry` and
//!   `defaultexpiry`; for PJSIP every AOR (a section or template of
//!   `type = aor`) gets `minimum_expiration`, `maximum_expiration` and
//!   `default_expiration`.
//! - Provisioning: a file rendered from a template with the Main as proxy
//!   and registrar and the Standby as backup, for the provisioning server's
//!   line template.
//!
//! Asterisk's `.conf` format has no maintained Rust parser, and a parser
//! that rebuilds the file would lose its comments and layout. The editor
//! here only classifies lines (section header, `key = value`, anything
//! else) and splices values in place, so every byte it does not set is kept:
//! comments, spacing, line endings, `#include`s. Editing twice gives the
//! same text as editing once.

use std::collections::HashMap;
use std::fmt;

/// Registration expiry bounds, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub min: u64,
    pub max: u64,
    pub default: u64,
}

impl Default for Expiry {
    /// XiVO's HA values: 1 minute, 5 minutes, 2 minutes.
    fn default() -> Expiry {
        Expiry {
            min: 60,
            max: 300,
            default: 120,
        }
    }
}

/// Which Asterisk SIP channel driver reads the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SipDriver {
    Pjsip,
    ChanSip,
}

impl fmt::Display for SipDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SipDriver::Pjsip => "pjsip",
            SipDriver::ChanSip => "chan_sip",
        })
    }
}

/// Why a file cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    #[error("not UTF-8 text (byte {0})")]
    NotText(usize),
    #[error("no [general] section: chan_sip's expiry settings live there")]
    NoGeneral,
    #[error("no AOR (a section with `type = aor`) to set the expiry on")]
    NoAor,
    #[error(
        "section [{0}] opens a block comment (`;--`) that never closes: nothing can be added to it"
    )]
    CommentedOut(String),
    #[error("the template names `{{{{{0}}}}}`, which is not one of: {1}")]
    UnknownPlaceholder(String, String),
}

impl Expiry {
    /// The (key, value) pairs a driver reads.
    pub fn keys(&self, driver: SipDriver) -> [(&'static str, String); 3] {
        let (min, max, def) = match driver {
            SipDriver::ChanSip => ("minexpiry", "maxexpiry", "defaultexpiry"),
            SipDriver::Pjsip => (
                "minimum_expiration",
                "maximum_expiration",
                "default_expiration",
            ),
        };
        [
            (min, self.min.to_string()),
            (max, self.max.to_string()),
            (def, self.default.to_string()),
        ]
    }
}

/// Set the expiry of `driver` in `text` (the whole file).
pub fn set_expiry(driver: SipDriver, text: &[u8], e: &Expiry) -> Result<Vec<u8>, EditError> {
    let text = std::str::from_utf8(text).map_err(|err| EditError::NotText(err.valid_up_to()))?;
    let doc = Doc::parse(text);
    let keys = e.keys(driver);
    let targets: Vec<Target> = match driver {
        SipDriver::ChanSip => {
            let general: Vec<usize> = (0..doc.sections.len())
                .filter(|&i| doc.sections[i].name.eq_ignore_ascii_case("general"))
                .collect();
            if general.is_empty() {
                return Err(EditError::NoGeneral);
            }
            // Replace wherever set; add once, to the first [general].
            general
                .iter()
                .enumerate()
                .map(|(n, &i)| Target {
                    section: i,
                    insert: n == 0,
                })
                .collect()
        }
        SipDriver::Pjsip => {
            let targets = doc.aor_targets();
            if targets.is_empty() {
                return Err(EditError::NoAor);
            }
            targets
        }
    };
    Ok(doc.edit(&targets, &keys)?.into_bytes())
}

/// A section to edit: replace the keys it sets, and add those it lacks
/// when `insert` (else it inherits them from an edited template).
struct Target {
    section: usize,
    insert: bool,
}

#[derive(Debug)]
enum Line {
    /// `[name](options)`
    Header,
    /// `key = value` (or `key => value`): where the value sits in the line.
    Pair {
        key: String,
        value: (usize, usize),
    },
    Other,
}

#[derive(Debug)]
struct Section {
    name: String,
    /// Templates named in the header (`(!,tpl)` → `tpl`).
    parents: Vec<String>,
    /// `(+)`: adds to an earlier section of the same name.
    append: bool,
    /// Line indices: the header, then the body up to the next header.
    header: usize,
    end: usize,
}

struct Doc<'a> {
    lines: Vec<&'a str>,
    kinds: Vec<Line>,
    /// Whether a block comment is still open at the end of each line: no
    /// line may be added there, it would be a comment.
    open_block: Vec<bool>,
    sections: Vec<Section>,
    eol: &'static str,
}

/// Where a comment starts (`;` not escaped as `\;`).
fn comment_start(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len()).find(|&i| b[i] == b';' && (i == 0 || b[i - 1] != b'\\'))
}

impl<'a> Doc<'a> {
    fn parse(text: &'a str) -> Doc<'a> {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let eol = if lines.first().is_some_and(|l| l.ends_with("\r\n")) {
            "\r\n"
        } else {
            "\n"
        };
        let mut kinds = Vec::with_capacity(lines.len());
        let mut open_block = Vec::with_capacity(lines.len());
        let mut sections: Vec<Section> = Vec::new();
        let mut in_block = false;
        for (i, raw) in lines.iter().enumerate() {
            let line = raw.trim_end_matches(['\n', '\r']);
            // Block comments: `;--` up to `--;`, possibly over many lines.
            if in_block {
                if line.contains("--;") {
                    in_block = false;
                }
                kinds.push(Line::Other);
                open_block.push(in_block);
                continue;
            }
            let code_end = comment_start(line).unwrap_or(line.len());
            if line[code_end..].starts_with(";--") && !line[code_end + 3..].contains("--;") {
                in_block = true;
            }
            open_block.push(in_block);
            let code = &line[..code_end];
            let t = code.trim();
            if t.starts_with('[') {
                if let Some(close) = t.find(']') {
                    let name = t[1..close].trim().to_owned();
                    let opts = t[close + 1..].trim();
                    let opts = opts
                        .strip_prefix('(')
                        .and_then(|o| o.strip_suffix(')'))
                        .unwrap_or("");
                    let opts: Vec<&str> = opts.split(',').map(str::trim).collect();
                    if let Some(last) = sections.last_mut() {
                        last.end = i;
                    }
                    sections.push(Section {
                        name,
                        parents: opts
                            .iter()
                            .filter(|o| !o.is_empty() && **o != "!" && **o != "+")
                            .map(|o| o.to_string())
                            .collect(),
                        append: opts.contains(&"+"),
                        header: i,
                        end: lines.len(),
                    });
                    kinds.push(Line::Header);
                    continue;
                }
            }
            if t.starts_with('#') || t.is_empty() || sections.is_empty() {
                kinds.push(Line::Other);
                continue;
            }
            match code.find('=') {
                Some(eq) => {
                    let key = code[..eq].trim().to_owned();
                    let mut v = eq + 1;
                    if code[v..].starts_with('>') {
                        v += 1;
                    }
                    let rest = &code[v..];
                    let start = v + (rest.len() - rest.trim_start().len());
                    let end = code.trim_end().len().max(start);
                    kinds.push(Line::Pair {
                        key,
                        value: (start, end),
                    });
                }
                None => kinds.push(Line::Other),
            }
        }
        Doc {
            lines,
            kinds,
            open_block,
            sections,
            eol,
        }
    }

    fn value(&self, line: usize) -> Option<(&str, &str)> {
        match &self.kinds[line] {
            Line::Pair { key, value } => Some((key, &self.lines[line][value.0..value.1])),
            _ => None,
        }
    }

    /// The `type` a section sets itself.
    fn own_type(&self, s: &Section) -> Option<&str> {
        (s.header + 1..s.end)
            .rev()
            .filter_map(|i| self.value(i))
            .find(|(k, _)| k.eq_ignore_ascii_case("type"))
            .map(|(_, v)| v)
    }

    /// The AOR sections to edit. A section is an AOR by its own `type` or by
    /// a template's; one that inherits from an AOR template gets the keys
    /// from it and is only edited where it sets them itself.
    fn aor_targets(&self) -> Vec<Target> {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, s) in self.sections.iter().enumerate() {
            by_name.entry(s.name.as_str()).or_default().push(i);
        }
        fn resolve<'d>(
            doc: &'d Doc,
            by_name: &HashMap<&str, Vec<usize>>,
            i: usize,
            depth: usize,
        ) -> Option<&'d str> {
            let s = &doc.sections[i];
            if let Some(t) = doc.own_type(s) {
                return Some(t);
            }
            if depth > 16 {
                return None;
            }
            // Later templates override earlier ones.
            s.parents.iter().rev().find_map(|p| {
                by_name
                    .get(p.as_str())
                    .and_then(|v| v.iter().rev().find(|&&j| j < i))
                    .and_then(|&j| resolve(doc, by_name, j, depth + 1))
            })
        }
        let is_aor =
            |i: usize| resolve(self, &by_name, i, 0).is_some_and(|t| t.eq_ignore_ascii_case("aor"));
        let mut out = Vec::new();
        for (i, s) in self.sections.iter().enumerate() {
            // `(+)` extends an earlier section: it inherits that one's type.
            let aor = if s.append {
                by_name[s.name.as_str()]
                    .iter()
                    .any(|&j| j < i && !self.sections[j].append && is_aor(j))
            } else {
                is_aor(i)
            };
            if !aor {
                continue;
            }
            let inherits = s.append
                || s.parents.iter().any(|p| {
                    by_name
                        .get(p.as_str())
                        .is_some_and(|v| v.iter().any(|&j| j < i && is_aor(j)))
                });
            out.push(Target {
                section: i,
                insert: !inherits,
            });
        }
        out
    }

    fn edit(&self, targets: &[Target], keys: &[(&str, String)]) -> Result<String, EditError> {
        let mut replace: HashMap<usize, &str> = HashMap::new();
        let mut insert_after: HashMap<usize, Vec<String>> = HashMap::new();
        let mut insert_before: HashMap<usize, Vec<String>> = HashMap::new();
        for t in targets {
            let s = &self.sections[t.section];
            let mut last_pair = s.header;
            let mut spaced = None;
            let mut seen = vec![false; keys.len()];
            for i in s.header + 1..s.end {
                let Line::Pair { key, value } = &self.kinds[i] else {
                    continue;
                };
                last_pair = i;
                if spaced.is_none() {
                    spaced = Some(self.lines[i][..value.0].contains(" ="));
                }
                for (n, (k, v)) in keys.iter().enumerate() {
                    if key.eq_ignore_ascii_case(k) {
                        replace.insert(i, v);
                        seen[n] = true;
                    }
                }
            }
            if !t.insert {
                continue;
            }
            let sep = if spaced.unwrap_or(false) { " = " } else { "=" };
            let added: Vec<String> = keys
                .iter()
                .zip(&seen)
                .filter(|(_, &s)| !s)
                .map(|((k, v), _)| format!("{k}{sep}{v}{}", self.eol))
                .collect();
            if added.is_empty() {
                continue;
            }
            // After the last setting, out of any block comment it opens;
            // before it when the comment never closes.
            let mut at = last_pair;
            while self.open_block[at] && at + 1 < self.lines.len() {
                at += 1;
            }
            if !self.open_block[at] {
                insert_after.entry(at).or_default().extend(added);
            } else if last_pair > s.header {
                insert_before.entry(last_pair).or_default().extend(added);
            } else {
                return Err(EditError::CommentedOut(s.name.clone()));
            }
        }
        let mut out =
            String::with_capacity(self.lines.iter().map(|l| l.len()).sum::<usize>() + 256);
        for (i, line) in self.lines.iter().enumerate() {
            for a in insert_before.get(&i).into_iter().flatten() {
                out.push_str(a);
            }
            match (replace.get(&i), &self.kinds[i]) {
                (Some(v), Line::Pair { value, .. }) => {
                    out.push_str(&line[..value.0]);
                    out.push_str(v);
                    // Keep a trailing comment in its column.
                    let rest = &line[value.1..];
                    let old = value.1 - value.0;
                    if v.len() < old && rest.trim_start_matches([' ', '\t']).starts_with(';') {
                        out.extend(std::iter::repeat_n(' ', old - v.len()));
                    }
                    out.push_str(rest);
                }
                _ => out.push_str(line),
            }
            if let Some(add) = insert_after.get(&i) {
                if !line.ends_with('\n') {
                    out.push_str(self.eol);
                }
                for a in add {
                    out.push_str(a);
                }
            }
        }
        Ok(out)
    }
}

/// What a provisioning template may name, as `{{name}}`.
pub const PLACEHOLDERS: &[&str] = &[
    "main_ip",
    "main_port",
    "standby_ip",
    "standby_port",
    "expiry",
];

/// The default provisioning file: the line settings of a XiVO/Wazo provd
/// template (`raw_config`), Main as proxy and registrar, Standby as backup.
pub const DEFAULT_PROVISIONING_TEMPLATE: &str = r#"{
  "_comment": "Written by resilience for HA failover; restored when HA is disabled. Resynchronize the phones to apply.",
  "raw_config": {
    "sip_proxy_ip": "{{main_ip}}",
    "sip_proxy_port": {{main_port}},
    "sip_registrar_ip": "{{main_ip}}",
    "sip_registrar_port": {{main_port}},
    "sip_backup_proxy_ip": "{{standby_ip}}",
    "sip_backup_proxy_port": {{standby_port}},
    "sip_backup_registrar_ip": "{{standby_ip}}",
    "sip_backup_registrar_port": {{standby_port}},
    "sip_registration_expires": {{expiry}}
  }
}
"#;

/// Replace each `{{name}}` of `template` by its value; a name that is not
/// in `vars` is an error (a typo would otherwise reach the phones).
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String, EditError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        let name = rest[open + 2..open + 2 + close].trim();
        let value = vars.iter().find(|(k, _)| *k == name).ok_or_else(|| {
            EditError::UnknownPlaceholder(
                name.to_owned(),
                vars.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
            )
        })?;
        out.push_str(&rest[..open]);
        out.push_str(&value.1);
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(driver: SipDriver, text: &str) -> String {
        String::from_utf8(set_expiry(driver, text.as_bytes(), &Expiry::default()).unwrap()).unwrap()
    }

    #[test]
    fn chan_sip_replaces_in_place_and_adds_what_is_missing() {
        let src = "[general]\r\ncontext = default ; where calls land\r\nmaxexpiry = 3600 ; one hour\r\n\r\n; peers\r\n[6001]\r\nmaxexpiry=10\r\n";
        let out = edit(SipDriver::ChanSip, src);
        assert_eq!(
            out,
            "[general]\r\ncontext = default ; where calls land\r\nmaxexpiry = 300  ; one hour\r\nminexpiry = 60\r\ndefaultexpiry = 120\r\n\r\n; peers\r\n[6001]\r\nmaxexpiry=10\r\n"
        );
        assert_eq!(edit(SipDriver::ChanSip, &out), out, "twice = once");
    }

    #[test]
    fn pjsip_edits_aors_and_their_templates_only() {
        let src = "\
[transport-udp]
type=transport
[aor-tpl](!)
type=aor
max_contacts=1
[6001](aor-tpl)
default_expiration=3600
[6002](aor-tpl)
[6003]
type = aor
;-- a block comment
type = endpoint
--;
[6003](+)
maximum_expiration = 7200
[6001]
type=endpoint
aors=6001";
        let out = edit(SipDriver::Pjsip, src);
        let want = "\
[transport-udp]
type=transport
[aor-tpl](!)
type=aor
max_contacts=1
minimum_expiration=60
maximum_expiration=300
default_expiration=120
[6001](aor-tpl)
default_expiration=120
[6002](aor-tpl)
[6003]
type = aor
minimum_expiration = 60
maximum_expiration = 300
default_expiration = 120
;-- a block comment
type = endpoint
--;
[6003](+)
maximum_expiration = 300
[6001]
type=endpoint
aors=6001";
        assert_eq!(out, want);
        assert_eq!(edit(SipDriver::Pjsip, &out), out);
    }

    #[test]
    fn nothing_is_added_inside_a_block_comment() {
        // Fuzzer find: a setting that opens a block comment on its line.
        let src = "[a]\ntype = aor ;-- starts here\nstill a comment\n--;\n[b]\ntype=aor;-- never closes\nx\n";
        let out = edit(SipDriver::Pjsip, src);
        assert_eq!(
            out,
            "[a]\ntype = aor ;-- starts here\nstill a comment\n--;\nminimum_expiration = 60\nmaximum_expiration = 300\ndefault_expiration = 120\n[b]\nminimum_expiration=60\nmaximum_expiration=300\ndefault_expiration=120\ntype=aor;-- never closes\nx\n"
        );
        assert_eq!(edit(SipDriver::Pjsip, &out), out);
        assert_eq!(
            set_expiry(
                SipDriver::Pjsip,
                b"[a] ;-- open\ntype=aor\n",
                &Expiry::default()
            ),
            Err(EditError::NoAor),
            "a section whose settings are all commented out is not an AOR"
        );
    }

    #[test]
    fn missing_sections_and_bad_bytes_are_errors() {
        let e = Expiry::default();
        assert_eq!(
            set_expiry(SipDriver::ChanSip, b"[6001]\nhost=dynamic\n", &e),
            Err(EditError::NoGeneral)
        );
        assert_eq!(
            set_expiry(SipDriver::Pjsip, b"[t]\ntype=transport\n", &e),
            Err(EditError::NoAor)
        );
        assert_eq!(
            set_expiry(SipDriver::ChanSip, b"[general]\n\xff\n", &e),
            Err(EditError::NotText(10))
        );
    }

    #[test]
    fn templates_render_known_names_only() {
        let vars = [("main_ip", "10.0.0.1".to_string())];
        assert_eq!(
            render("ip={{main_ip}} {x}", &vars).unwrap(),
            "ip=10.0.0.1 {x}"
        );
        let e = render("{{mian_ip}}", &vars).unwrap_err();
        assert!(e.to_string().contains("`{{mian_ip}}`"), "{e}");
    }
}

//! The TOML config file: the settings table's keys, every key optional.
//!
//! Two shapes. One service, as on the command line: every key at the top level
//! (`bind = "127.0.0.1:9000"`, `workers = 4`, `keep_alive = 2`). Several services: server
//! settings at the top level, and one `[[service]]` table per service with its `kind`, an
//! optional `name`, its `bind` and its own settings:
//!
//! ```toml
//! workers = 2
//! [[service]]
//! kind = "static"
//! bind = "127.0.0.1:8000"
//! root = "public"
//! [[service]]
//! kind = "chat"
//! bind = "127.0.0.1:7000"
//! ```
//!
//! Every problem is reported at once, each with its line and, for a typo, the closest known
//! key: an unknown key is an error, not a warning (`worker = 4` must not silently leave the
//! default in place), and so is a key in a table it does not belong to.
//!
//! This module reads one file and turns it into [`Layer`]s; the merge is [`super::merge`]'s.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::settings::{Kind, SETTINGS, Scope, Setting, Type, Value, suggest};

/// Settings given by one source (the command line, the file's top level, one `[[service]]`),
/// by key. Only keys that were given are present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layer(pub BTreeMap<&'static str, Value>);

impl Layer {
    /// The value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Sets `key` (later sources call this to win over earlier ones).
    pub fn set(&mut self, key: &'static str, value: Value) {
        self.0.insert(key, value);
    }

    /// Whether nothing was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One `[[service]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct FileService {
    /// `kind = "..."`.
    pub kind: Kind,
    /// `name = "..."`, or the kind's name.
    pub name: String,
    /// Its settings.
    pub settings: Layer,
    /// The line of its `[[service]]` header, for messages.
    pub line: usize,
}

/// What a config file says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    /// Top-level keys: server settings, and a single service's settings when there are no
    /// `[[service]]` tables.
    pub top: Layer,
    /// The `[[service]]` tables, in order; empty for the one-service shape.
    pub services: Vec<FileService>,
}

impl FileConfig {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::File`] listing every
    /// problem (with its line) when it is not valid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // `-c ''`: the OS's "No such file or directory" after an empty name read as if a
        // file were missing (`cannot read config file : No such file ...`).
        if path.as_os_str().is_empty() {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an empty path: give -c the path of a TOML file",
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::File {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses a config file's text.
    ///
    /// # Errors
    /// Every problem found, one line each (`line 3: unknown key ...`).
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let doc = DeTable::parse(text).map_err(|err| {
            let message = err.message().trim().replace('\n', "; ");
            vec![match err.span() {
                Some(span) => format!("line {}: {message}", line_of(text, span.start)),
                None => message,
            }]
        })?;
        let mut problems = Vec::new();
        let mut config = FileConfig::default();
        for (key, value) in doc.get_ref() {
            let line = line_of(text, key.span().start);
            if key.get_ref() == "service" {
                match value.get_ref() {
                    DeValue::Array(tables) => {
                        for t in tables.iter() {
                            let line = line_of(text, t.span().start);
                            match t.get_ref() {
                                DeValue::Table(table) => {
                                    if let Some(s) = service(text, table, line, &mut problems) {
                                        config.services.push(s);
                                    }
                                }
                                _ => problems.push(format!(
                                    "line {line}: `service` must be a table: write [[service]]"
                                )),
                            }
                        }
                    }
                    _ => problems.push(format!(
                        "line {line}: `service` must be a list of tables: write [[service]]"
                    )),
                }
                continue;
            }
            let Some(s) = known(key.get_ref(), line, None, &mut problems) else {
                continue;
            };
            if let Some(v) = value_of(s, value, line, &mut problems) {
                config.top.set(s.key, v);
            }
        }
        if !config.services.is_empty() {
            // With [[service]] tables the top level is the server's alone: a service key there
            // would be ambiguous (which service?).
            for (key, _) in doc.get_ref() {
                let k = key.get_ref();
                if k != "service"
                    && let Some(s) = SETTINGS.iter().find(|s| s.key == k)
                    && s.scope != Scope::Server
                {
                    problems.push(format!(
                        "line {}: `{k}` is a service setting: move it into the [[service]] \
                         table(s) it applies to",
                        line_of(text, key.span().start)
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            // The parser's tables are keyed, not ordered: report in the file's order.
            problems.sort_by_key(|p| {
                p.strip_prefix("line ")
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            });
            Err(problems)
        }
    }
}

/// The setting called `key`, or a problem with a "did you mean" when it is a typo. `kind` is
/// the service the key appears under, if it is inside a `[[service]]` table.
fn known(
    key: &str,
    line: usize,
    kind: Option<Kind>,
    problems: &mut Vec<String>,
) -> Option<&'static Setting> {
    match SETTINGS.iter().find(|s| s.key == key) {
        Some(s) => match kind {
            Some(_) if s.scope == Scope::Server => {
                problems.push(format!(
                    "line {line}: `{key}` is a server setting: move it to the top of the file, \
                     before the first [[service]]"
                ));
                None
            }
            Some(kind) if !s.scope.has(kind) => {
                problems.push(format!(
                    "line {line}: `{key}` is not a setting of the {} service",
                    kind.name()
                ));
                None
            }
            _ => Some(s),
        },
        None => {
            let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
            names.extend(["service", "kind", "name"]);
            let hint = suggest(key, names)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            problems.push(format!("line {line}: unknown key `{key}`{hint}"));
            None
        }
    }
}

/// One `[[service]]` table.
fn service(
    text: &str,
    table: &DeTable<'_>,
    line: usize,
    problems: &mut Vec<String>,
) -> Option<FileService> {
    let kind = match table.get("kind").map(|v| (v.get_ref().as_str(), v.span())) {
        Some((Some(name), span)) => match Kind::from_name(name) {
            Some(k) => k,
            None => {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                problems.push(format!(
                    "line {}: unknown service kind `{name}`: expected one of {}",
                    line_of(text, span.start),
                    names.join(", ")
                ));
                return None;
            }
        },
        Some((None, span)) => {
            problems.push(format!(
                "line {}: `kind` must be a string such as \"static\"",
                line_of(text, span.start)
            ));
            return None;
        }
        None => {
            problems.push(format!(
                "line {line}: this [[service]] has no `kind` (static, echo, chat or quote)"
            ));
            return None;
        }
    };
    let mut name = kind.name().to_string();
    let mut settings = Layer::default();
    for (key, value) in table {
        let kline = line_of(text, key.span().start);
        match key.get_ref().as_ref() {
            "kind" => {}
            "name" => match value.get_ref().as_str() {
                Some(n) if !n.trim().is_empty() => name = n.trim().to_string(),
                _ => problems.push(format!("line {kline}: `name` must be a non-empty string")),
            },
            k => {
                if let Some(s) = known(k, kline, Some(kind), problems)
                    && let Some(v) = value_of(s, value, kline, problems)
                {
                    settings.set(s.key, v);
                }
            }
        }
    }
    Some(FileService {
        kind,
        name,
        settings,
        line,
    })
}

/// A file value as the setting's type, through the same parser as the command line's.
fn value_of(
    s: &'static Setting,
    value: &Spanned<DeValue<'_>>,
    line: usize,
    problems: &mut Vec<String>,
) -> Option<Value> {
    let text = |v: &DeValue<'_>| -> Option<String> {
        match v {
            DeValue::String(s) => Some(s.to_string()),
            DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().replace('_', "")),
            DeValue::Integer(i) => u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n.to_string()),
            DeValue::Float(f) => Some(f.as_str().replace('_', "")),
            DeValue::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let expected = match s.ty {
        Type::Duration { .. } => "a number of seconds or a string such as \"500ms\"",
        Type::Count { .. } => "a whole number",
        Type::Flag => "true or false",
        Type::Path => "a path in a string",
        Type::Text { .. } | Type::Level => "a string",
        Type::Binds => "an address in a string, or a list of them",
    };
    let v = value.get_ref();
    let fits = matches!(
        (s.ty, v),
        (
            Type::Duration { .. },
            DeValue::Integer(_) | DeValue::Float(_) | DeValue::String(_)
        ) | (Type::Count { .. }, DeValue::Integer(_))
            | (Type::Flag, DeValue::Boolean(_))
            | (
                Type::Path | Type::Text { .. } | Type::Level,
                DeValue::String(_)
            )
            | (Type::Binds, DeValue::String(_) | DeValue::Array(_))
    );
    if !fits {
        problems.push(format!(
            "line {line}: `{}` must be {expected}, not {} {}",
            s.key,
            if v.type_str().starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            },
            v.type_str()
        ));
        return None;
    }
    let parsed = if let DeValue::Array(items) = v {
        let mut all = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(a) => match s.parse(a) {
                    Ok(Value::Binds(mut one)) => all.append(&mut one),
                    Ok(_) => unreachable!("binds parse to binds"),
                    Err(e) => {
                        problems.push(format!("line {line}: invalid {}: {e}", s.key));
                        return None;
                    }
                },
                other => {
                    problems.push(format!(
                        "line {line}: `{}` must be {expected}, not a list of {}",
                        s.key,
                        other.type_str()
                    ));
                    return None;
                }
            }
        }
        Ok(Value::Binds(all))
    } else {
        s.parse(&text(v).unwrap_or_default())
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("line {line}: invalid {}: {e}", s.key));
            None
        }
    }
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// One `[[service]]` table to render: its name, kind and values in table order.
pub type RenderedService = (String, Kind, Vec<(&'static str, Value)>);

/// Renders a configuration back as a config file (`--print-config`): the top-level layer,
/// then one `[[service]]` table each. Its output parses back into the same configuration.
pub fn render(top: &[(&'static str, Value)], services: &[RenderedService]) -> String {
    let mut doc = toml::Table::new();
    for (k, v) in top {
        doc.insert((*k).to_string(), v.to_toml());
    }
    let mut list = Vec::new();
    for (name, kind, values) in services {
        let mut t = toml::Table::new();
        t.insert("kind".into(), kind.name().into());
        if name != kind.name() {
            t.insert("name".into(), name.clone().into());
        }
        for (k, v) in values {
            t.insert((*k).to_string(), v.to_toml());
        }
        list.push(toml::Value::Table(t));
    }
    if !list.is_empty() {
        doc.insert("service".into(), toml::Value::Array(list));
    }
    toml::to_string(&doc).expect("a table of plain values renders")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_every_key_of_the_one_service_shape() {
        let c = FileConfig::parse(
            r#"
            bind = ["127.0.0.1:1", "unix:/tmp/a"]
            workers = 3
            timeout = 10
            graceful_timeout = 2.5
            worker_connections = 7
            backlog = 16
            idle_timeout = "500ms"
            pid = "/tmp/p"
            log_level = "debug"
            error_logfile = "/tmp/log"
            root = "/srv"
            keep_alive = 2
            header_timeout = "1500ms"
            limit_request_line = 100
            limit_request_fields = 10
            limit_request_field_size = 200
            follow_symlinks = true
            show_hidden = false
            no_listing = true
            access_logfile = "-"
            max_line = 100
            quote = "hello"
            "#,
        )
        .unwrap();
        match c.top.get("bind") {
            Some(Value::Binds(list)) => assert_eq!(list.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.top.get("graceful_timeout"),
            Some(&Value::Duration(Duration::from_millis(2500)))
        );
        assert_eq!(
            c.top.get("idle_timeout"),
            Some(&Value::Duration(Duration::from_millis(500)))
        );
        assert_eq!(c.top.get("no_listing"), Some(&Value::Flag(true)));
        assert_eq!(c.top.get("max_line"), Some(&Value::Count(100)));
        assert_eq!(c.top.get("quote"), Some(&Value::Text("hello".into())));
        assert!(c.services.is_empty());
    }

    #[test]
    fn a_single_bind_is_a_list_of_one() {
        let c = FileConfig::parse(r#"bind = "127.0.0.1:1""#).unwrap();
        assert_eq!(
            c.top.get("bind"),
            Some(&Value::Binds(vec!["127.0.0.1:1".parse().unwrap()]))
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_a_suggestion() {
        let problems =
            FileConfig::parse("worker = 4\nworkers = \"four\"\ntimeout = -1\nkeepalive = 2\n")
                .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 1: unknown key `worker` (did you mean `workers`?)"));
        assert!(problems[1].starts_with("line 2: `workers` must be a whole number"));
        assert!(problems[2].starts_with("line 3: invalid timeout"));
        assert!(
            problems[3].contains("did you mean `keep_alive`?"),
            "{problems:?}"
        );
    }

    #[test]
    fn text_with_a_syntax_is_checked_with_its_line() {
        let problems =
            FileConfig::parse("workers = 1\nforwarded_allow_ips = \"10.0.0.0/33\"\nbind = 1\n")
                .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("line 2: invalid forwarded_allow_ips: `10.0.0.0/33`"),
            "{problems:?}"
        );
        assert!(problems[1].ends_with("not an integer"), "{problems:?}");
    }

    #[test]
    fn services_are_tables_with_their_own_keys() {
        let c = FileConfig::parse(
            "workers = 2\n[[service]]\nkind = \"static\"\nbind = \"127.0.0.1:1\"\nroot = \"/srv\"\n\
             [[service]]\nkind = \"chat\"\nname = \"room\"\nbind = [\"127.0.0.1:2\"]\nmax_line = 9\n",
        )
        .unwrap();
        assert_eq!(c.top.get("workers"), Some(&Value::Count(2)));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].kind, Kind::Static);
        assert_eq!(c.services[1].name, "room");
        assert_eq!(
            c.services[1].settings.get("max_line"),
            Some(&Value::Count(9))
        );
        assert_eq!(c.services[1].line, 6);
    }

    #[test]
    fn keys_in_the_wrong_table_are_refused() {
        let problems = FileConfig::parse(
            "keep_alive = 2\n[[service]]\nkind = \"chat\"\nroot = \"/srv\"\nworkers = 2\n\
             [[service]]\nkind = \"ftp\"\n[[service]]\nbind = \"127.0.0.1:1\"\n",
        )
        .unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("line 4: `root` is not a setting of the chat service"),
            "{all}"
        );
        assert!(
            all.contains("line 5: `workers` is a server setting"),
            "{all}"
        );
        assert!(all.contains("unknown service kind `ftp`"), "{all}");
        assert!(all.contains("has no `kind`"), "{all}");
        assert!(
            all.contains("line 1: `keep_alive` is a service setting"),
            "{all}"
        );
    }

    #[test]
    fn rendered_files_parse_back() {
        let top = vec![("workers", Value::Count(2))];
        let services = vec![(
            "room".to_string(),
            Kind::Chat,
            vec![
                ("bind", Value::Binds(vec!["127.0.0.1:2".parse().unwrap()])),
                ("max_line", Value::Count(9)),
            ],
        )];
        let text = render(&top, &services);
        let c = FileConfig::parse(&text).unwrap();
        assert_eq!(c.services[0].name, "room");
        assert_eq!(
            c.services[0].settings.get("max_line"),
            Some(&Value::Count(9))
        );
    }
}

//! The TOML config file: the flags' names with underscores, every key optional.
//!
//! Unknown keys are an error, not a warning: a typo such as `worker = 4` must not silently
//! leave the default in place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, parse_duration};

/// What a config file may set. Also what `--print-config` writes, so its output can be used as a
/// config file as it is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--bind`: one address or a list.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "one_or_many"
    )]
    pub bind: Option<Vec<String>>,
    /// `--workers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// `--timeout`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub timeout: Option<Duration>,
    /// `--graceful-timeout`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub graceful_timeout: Option<Duration>,
    /// `--worker-connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_connections: Option<usize>,
    /// `--backlog`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    /// `--idle-timeout`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub idle_timeout: Option<Duration>,
    /// `--pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<PathBuf>,
    /// `--log-level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// `--error-logfile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_logfile: Option<PathBuf>,

    // `static` settings; read whatever the service, used by `static` only.
    /// `static DIR`: the directory served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// `--keep-alive`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub keep_alive: Option<Duration>,
    /// `--header-timeout`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub header_timeout: Option<Duration>,
    /// `--limit-request-line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_request_line: Option<usize>,
    /// `--limit-request-fields`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_request_fields: Option<usize>,
    /// `--limit-request-field-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_request_field_size: Option<usize>,
    /// `--follow-symlinks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_symlinks: Option<bool>,
    /// `--show-hidden`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_hidden: Option<bool>,
    /// `--no-listing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_listing: Option<bool>,
    /// `--access-logfile` (`"-"` = stdout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_logfile: Option<PathBuf>,
    /// `--access-logformat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_logformat: Option<String>,
    /// `--max-age`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub max_age: Option<Duration>,
    /// `--max-line` (chat, quote; ignored by other services).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_line: Option<usize>,
    /// `--quote` (quote; ignored by other services).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Parse`] (with TOML's
    /// line and column) when it is not valid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&text, &err),
        })
    }
}

/// TOML's message on one line, with the line number: it goes into log lines.
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} ({source}): {message}")
        }
        None => message,
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// Durations in the file: a number of seconds (`30`, `2.5`) or a string with a unit (`"500ms"`).
mod seconds {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Text(s) => s,
        };
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) if d.subsec_nanos() == 0 => s.serialize_u64(d.as_secs()),
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let c: FileConfig = toml::from_str(
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
        assert_eq!(c.bind.as_ref().unwrap().len(), 2);
        assert_eq!(c.graceful_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.idle_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.header_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.no_listing, Some(true));
        assert_eq!(c.max_line, Some(100));
        assert_eq!(c.quote.as_deref(), Some("hello"));
        let again: FileConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn a_single_bind_is_a_list_of_one() {
        let c: FileConfig = toml::from_str(r#"bind = "127.0.0.1:1""#).unwrap();
        assert_eq!(c.bind, Some(vec!["127.0.0.1:1".to_string()]));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("worker = 4").is_err());
        assert!(toml::from_str::<FileConfig>("workers = \"four\"").is_err());
        assert!(toml::from_str::<FileConfig>("timeout = -1").is_err());
    }
}

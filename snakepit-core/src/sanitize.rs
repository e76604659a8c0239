//! Scrubbing telemetry data: redact values under sensitive keys, truncate long strings.
//!
//! The event bus runs every event through a [`Sanitizer`] before any consumer sees it;
//! the telemetry crate uses the same type for span attributes, log fields and metric
//! labels, so one configuration governs everything that leaves the process.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How telemetry data is scrubbed before any consumer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanitizeConfig {
    /// Off: values pass unchanged (nothing redacted, nothing cut).
    pub enabled: bool,
    /// A key containing any of these (case-insensitive) has its value replaced.
    pub sensitive_keys: Vec<String>,
    /// Longer strings are cut to this many characters and marked as truncated.
    pub max_string_length: usize,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        SanitizeConfig {
            enabled: true,
            sensitive_keys: ["password", "token", "secret", "key", "auth"]
                .map(String::from)
                .to_vec(),
            max_string_length: 1000,
        }
    }
}

/// What a sensitive value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Applies a [`SanitizeConfig`]: redacts values under sensitive keys, cuts long strings.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    enabled: bool,
    /// Lower-cased fragments; a key containing any of them is sensitive.
    keys: Vec<String>,
    max_len: usize,
}

impl Default for Sanitizer {
    fn default() -> Self {
        Sanitizer::new(&SanitizeConfig::default())
    }
}

impl Sanitizer {
    /// A sanitizer following `cfg`.
    pub fn new(cfg: &SanitizeConfig) -> Self {
        Sanitizer {
            enabled: cfg.enabled,
            keys: cfg
                .sensitive_keys
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
            max_len: cfg.max_string_length,
        }
    }

    /// A sanitizer that leaves everything as it is.
    pub fn disabled() -> Self {
        Sanitizer {
            enabled: false,
            keys: Vec::new(),
            max_len: usize::MAX,
        }
    }

    /// Whether it redacts at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// True when values under `key` must not leave the process.
    pub fn is_sensitive(&self, key: &str) -> bool {
        if !self.enabled {
            return false;
        }
        // Keys are short; lower-casing into a small buffer beats a regex.
        let lower = key.to_ascii_lowercase();
        self.keys.iter().any(|k| lower.contains(k.as_str()))
    }

    /// Cut `s` to the maximum length (on a char boundary), noting how much was cut.
    pub fn truncate(&self, s: &mut String) {
        if !self.enabled || s.len() <= self.max_len {
            return;
        }
        let Some((cut, _)) = s.char_indices().nth(self.max_len) else {
            return; // fewer chars than bytes: within the limit after all
        };
        let dropped = s[cut..].chars().count();
        s.truncate(cut);
        s.push_str(&format!("…[truncated {dropped} chars]"));
    }

    /// Like [`Sanitizer::truncate`] but keeps the *end*: for tracebacks and stderr tails,
    /// whose last lines (the exception, the fatal error) matter most.
    pub fn truncate_keep_end(&self, s: &mut String) {
        if !self.enabled || s.len() <= self.max_len {
            return;
        }
        let total = s.chars().count();
        if total <= self.max_len {
            return;
        }
        let dropped = total - self.max_len;
        let Some((cut, _)) = s.char_indices().nth(dropped) else {
            return;
        };
        *s = format!("[truncated {dropped} chars]…{}", &s[cut..]);
    }

    /// Redact sensitive keys at any depth and truncate every string.
    pub fn value(&self, v: &mut Value) {
        if !self.enabled {
            return;
        }
        match v {
            Value::String(s) => self.truncate(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.value(i)),
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    if self.is_sensitive(k) {
                        *item = Value::String(REDACTED.to_string());
                    } else {
                        self.value(item);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A sanitized copy of a key/value pair, for flat attribute lists.
    pub fn field(&self, key: &str, value: &str) -> String {
        if self.is_sensitive(key) {
            return REDACTED.to_string();
        }
        let mut s = value.to_string();
        self.truncate(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_nested_sensitive_keys_case_insensitively() {
        let s = Sanitizer::default();
        let mut v = json!({"user": "ann", "Password": "hunter2", "nested": {"api_KEY": "k", "list": [{"auth_header": "x"}]}});
        s.value(&mut v);
        assert_eq!(
            v,
            json!({"user": "ann", "Password": REDACTED, "nested": {"api_KEY": REDACTED, "list": [{"auth_header": REDACTED}]}})
        );
    }

    #[test]
    fn truncates_on_char_boundaries() {
        let s = Sanitizer::new(&SanitizeConfig {
            max_string_length: 16,
            ..SanitizeConfig::default()
        });
        let mut text = "é".repeat(40);
        s.truncate(&mut text);
        assert!(text.starts_with(&"é".repeat(16)));
        assert!(text.ends_with("…[truncated 24 chars]"), "{text}");
        let mut short = "é".repeat(10); // 20 bytes, 10 chars: within the limit
        s.truncate(&mut short);
        assert_eq!(short, "é".repeat(10));
    }

    #[test]
    fn keep_end_truncation_keeps_the_last_lines() {
        let s = Sanitizer::new(&SanitizeConfig {
            max_string_length: 20,
            ..SanitizeConfig::default()
        });
        let mut tb = format!("{}\nValueError: boom", "frame\n".repeat(50));
        s.truncate_keep_end(&mut tb);
        assert!(tb.ends_with("ValueError: boom"), "{tb}");
        assert!(tb.starts_with("[truncated "), "{tb}");
    }

    #[test]
    fn disabled_changes_nothing() {
        let s = Sanitizer::disabled();
        let mut v = json!({"password": "x".repeat(5000)});
        let before = v.clone();
        s.value(&mut v);
        assert_eq!(v, before);
    }
}

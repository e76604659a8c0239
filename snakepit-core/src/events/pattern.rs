//! Event name patterns: an exact name (`snakepit.pool.saturated`), a prefix with a
//! trailing `*` (`snakepit.worker.*`, `snakepit.*`), or `*` for everything. A pattern is
//! resolved once, at subscription, into a bit mask over the 16 event kinds.

use std::fmt;

use super::EventKind;

/// An event pattern that matches no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event pattern {pattern:?} matches no event; use a full name like 'snakepit.pool.saturated' or a prefix like 'snakepit.worker.*'")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
}

/// A set of event kinds, built from one or more patterns.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Pattern {
    mask: u32,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.kinds().map(EventKind::name))
            .finish()
    }
}

impl Pattern {
    /// Every event.
    pub fn all() -> Self {
        Pattern {
            mask: EventKind::ALL.iter().fold(0, |m, k| m | k.bit()),
        }
    }

    /// Parse one pattern.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let pattern_trimmed = pattern.trim();
        let mask = match pattern_trimmed.strip_suffix('*') {
            Some(prefix) => EventKind::ALL
                .iter()
                .filter(|k| k.name().starts_with(prefix))
                .fold(0, |m, k| m | k.bit()),
            None => EventKind::from_name(pattern_trimmed).map_or(0, EventKind::bit),
        };
        if mask == 0 {
            return Err(PatternError {
                pattern: pattern.to_string(),
            });
        }
        Ok(Pattern { mask })
    }

    /// The union of several patterns.
    pub fn any<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, PatternError> {
        patterns.into_iter().try_fold(Pattern::default(), |acc, p| {
            Ok(Pattern {
                mask: acc.mask | Pattern::parse(p)?.mask,
            })
        })
    }

    /// Events matching either pattern.
    pub fn union(self, other: Pattern) -> Pattern {
        Pattern {
            mask: self.mask | other.mask,
        }
    }

    /// Whether events of `kind` match.
    pub fn matches(&self, kind: EventKind) -> bool {
        self.mask & kind.bit() != 0
    }

    /// Every kind that matches.
    pub fn kinds(&self) -> impl Iterator<Item = EventKind> + '_ {
        EventKind::ALL.iter().copied().filter(|k| self.matches(*k))
    }

    pub(crate) fn mask(&self) -> u32 {
        self.mask
    }
}

impl From<EventKind> for Pattern {
    fn from(kind: EventKind) -> Self {
        Pattern { mask: kind.bit() }
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::any(s.split(','))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_exact_names_and_unions() {
        let worker = Pattern::parse("snakepit.worker.*").unwrap();
        assert_eq!(worker.kinds().count(), 5);
        assert!(worker.matches(EventKind::WorkerCrashed));
        assert!(!worker.matches(EventKind::PoolSaturated));
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::all());
        assert_eq!(Pattern::parse("snakepit.*").unwrap(), Pattern::all());
        let exact = Pattern::parse("snakepit.pool.saturated").unwrap();
        assert_eq!(
            exact.kinds().collect::<Vec<_>>(),
            [EventKind::PoolSaturated]
        );
        let union: Pattern = "snakepit.session.*,snakepit.request.timeout"
            .parse()
            .unwrap();
        assert_eq!(union.kinds().count(), 4);
    }

    #[test]
    fn patterns_matching_nothing_are_errors() {
        for bad in [
            "snakepit.workers.*",
            "worker.crashed",
            "",
            "snakepit.pool.saturate",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}

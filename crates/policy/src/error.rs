//! Why a policy document is rejected.

/// A policy document that CreatePolicy / CreatePolicyVersion must reject with
/// `MalformedPolicyException`. The `Display` text says what is wrong and where, and is meant
/// to be returned to the caller as the exception's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not JSON. `line` and `column` are one-based, as serde_json reports them.
    #[error("policy document is not valid JSON: {message} at line {line}, column {column}")]
    Syntax {
        /// What the JSON parser expected or found.
        message: String,
        /// One-based line of the error.
        line: usize,
        /// One-based column of the error.
        column: usize,
    },
    /// Valid JSON, but not a valid policy.
    #[error("{}", located(path, message))]
    Invalid {
        /// Where: `Version`, `Statement[1].Effect`, `Statement[0].Condition.Bool.aws:SecureTransport`,
        /// or empty for the document as a whole.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// More non-whitespace characters than AWS IoT allows in one policy document.
    #[error("policy document has {len} non-whitespace characters; the limit is {max}")]
    TooLarge {
        /// Counted characters, whitespace excluded.
        len: usize,
        /// The limit.
        max: usize,
    },
}

fn located(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

impl PolicyError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn from_json(err: &serde_json::Error) -> PolicyError {
        let line = err.line();
        let column = err.column();
        let full = err.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        PolicyError::Syntax {
            message,
            line,
            column,
        }
    }
}

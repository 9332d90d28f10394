//! weir's one error shape: a kind that says who must act and whether a retry can help, the operator
//! it came from, where in the input it happened, and the whole cause chain.
//!
//! Messages are lowercase without a trailing period. Print an error with [`Error::report`] (or `{:#}`)
//! to see the cause chain.

use std::fmt;

/// A boxed cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with weir's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The pipeline spec, its configuration or its input data is wrong: the user must fix it.
    User,
    /// Something outside weir failed (a file system, a network service, a model runtime).
    External,
    /// A bug in weir.
    Internal,
}

/// What went wrong, coarsely; the message and fields say the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The pipeline spec or a command-line option is invalid.
    Config,
    /// Schemas do not fit together (found when the graph is planned).
    Schema,
    /// A row or file of input data cannot be read or processed.
    InvalidInput,
    /// An external system failed; a retry may help.
    External,
    /// Reading or writing a file or object failed.
    Io,
    /// The job was cancelled.
    Cancelled,
    /// A bug in weir.
    Internal,
}

impl ErrorKind {
    /// Who must act on errors of this kind.
    pub fn domain(self) -> ErrorDomain {
        match self {
            ErrorKind::Config | ErrorKind::Schema | ErrorKind::InvalidInput => ErrorDomain::User,
            ErrorKind::External | ErrorKind::Io | ErrorKind::Cancelled => ErrorDomain::External,
            ErrorKind::Internal => ErrorDomain::Internal,
        }
    }

    /// Whether retrying the same work may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::External | ErrorKind::Io)
    }
}

/// An error with its kind, operator, input location and cause chain.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    operator: Option<String>,
    location: Option<String>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a lowercase message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            operator: None,
            location: None,
            source: None,
        }
    }

    /// An invalid-configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A schema error found while planning.
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Schema, message)
    }

    /// Bad input data.
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A failure of an external system.
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, message)
    }

    /// An IO failure.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }

    /// A bug in weir.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Names the operator the error came from, unless one is already named.
    pub fn in_operator(mut self, operator: impl Into<String>) -> Self {
        if self.operator.is_none() {
            self.operator = Some(operator.into());
        }
        self
    }

    /// Says where in the input the error happened (file, line, row, column), unless already said.
    pub fn at(mut self, location: impl Into<String>) -> Self {
        if self.location.is_none() {
            self.location = Some(location.into());
        }
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without operator, location or causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operator named, if any.
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// The input location named, if any.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The whole error with its cause chain, one cause per line.
    pub fn report(&self) -> String {
        format!("{self:#}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = &self.operator {
            write!(f, "operator '{op}': ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(loc) = &self.location {
            write!(f, " (at {loc})")?;
        }
        if self.kind == ErrorKind::Internal {
            write!(f, "; this is a bug in weir, please report it")?;
        }
        if f.alternate() {
            let mut cause: Option<&(dyn std::error::Error + 'static)> =
                self.source.as_deref().map(|e| e as _);
            while let Some(c) = cause {
                write!(f, "\n  caused by: {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::new(ErrorKind::InvalidInput, "arrow compute failed").with_source(e)
    }
}

/// Adds context to foreign results: `fs::read(p).context_io(|| format!("reading {p}"))`.
pub trait ResultExt<T> {
    /// Wraps the error as `kind` with `message` as context.
    fn with_kind(self, kind: ErrorKind, message: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for std::result::Result<T, E> {
    fn with_kind(self, kind: ErrorKind, message: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(kind, message()).with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operator_location_and_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::io("cannot open input file data/x.csv")
            .with_source(io)
            .in_operator("orders")
            .at("data/x.csv");
        assert_eq!(
            e.to_string(),
            "operator 'orders': cannot open input file data/x.csv (at data/x.csv)"
        );
        assert!(e.report().contains("caused by: no such file"));
        assert_eq!(e.kind().domain(), ErrorDomain::External);
        assert!(e.kind().is_retryable());
    }

    #[test]
    fn first_operator_named_wins() {
        let e = Error::input("bad")
            .in_operator("inner")
            .in_operator("outer");
        assert_eq!(e.operator(), Some("inner"));
    }

    #[test]
    fn internal_errors_ask_for_a_report() {
        assert!(
            Error::internal("channel closed")
                .to_string()
                .contains("bug")
        );
    }
}

//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in the operator. Messages say what failed, on which object.
#[derive(Debug, Error)]
pub enum Error {
    /// A manifest could not be rendered (a bug in the types, not in user input).
    #[error("cannot render {what}: {reason}")]
    Render {
        /// What was being rendered.
        what: &'static str,
        /// The serialiser's complaint.
        reason: String,
    },
    /// A resource the operator cannot act on as it is.
    #[error("{kind} {name}: {reason}")]
    InvalidResource {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

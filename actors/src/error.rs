//! What can go wrong when an actor handles a command, phrased so that the HTTP layer can map
//! each case once to a status code and a message that tells the caller what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ActorError {
    /// The target does not exist, or belongs to another tenant (never say which).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input is well-formed but not acceptable; `field` names the culprit.
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    /// The command conflicts with the current state (e.g. an occupied bed taken out of service).
    #[error("{0}")]
    Conflict(String),
    /// The time asked for is taken; `conflicting` names what is in the way (e.g. an appointment).
    #[error("{detail}")]
    Taken { detail: String, conflicting: serde_json::Value },
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The actor crashed while handling this command and was restarted from its last committed
    /// state; the command was not applied and may be retried.
    #[error("the {0} actor crashed while handling this command and was restarted; nothing was applied, retry")]
    Crashed(&'static str),
    /// The actor cannot serve right now (mailbox closed, state not loaded, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Another hub node serves this tenant (it holds the tenant's lease); nothing was done here.
    /// The HTTP layer forwards the request to that node.
    #[error("{0}")]
    NotOwner(String),
    /// The database failed; the command was not acknowledged.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<actix::MailboxError> for ActorError {
    fn from(error: actix::MailboxError) -> Self {
        ActorError::Unavailable(format!("actor unavailable: {error}; retry"))
    }
}

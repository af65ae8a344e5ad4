//! Persistence as plain functions over a connection. The DB actor
//! (`actors::db`) owns the connection at run time; start-up and tests call these
//! functions directly.

pub mod over_limit;
pub(crate) mod quota;
pub mod redis;
pub mod sqlite;

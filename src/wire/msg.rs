//! The former home of the messages pgveil builds and reads outside the
//! session layer, kept for the moment as re-exports so that `wire::msg::…`
//! paths keep compiling; the messages live in their family files
//! (`startup`, `auth`, `status`, `error`) and the body primitives in `body`.

pub use super::auth::*;
pub use super::body::{begin, finish, put_cstr};
pub use super::error::*;
pub use super::startup::*;
pub use super::status::*;

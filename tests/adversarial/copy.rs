//! (filled in by the copy work)

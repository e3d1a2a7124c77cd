//! (filled in by the prepared work)

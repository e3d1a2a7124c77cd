//! (filled in by the catalog work)

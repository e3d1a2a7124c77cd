//! (filled in by the splice work)

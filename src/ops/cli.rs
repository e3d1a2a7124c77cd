//! Command line (clap). Exit codes: 0 success, 1 a problem the user must fix, 2 usage.

pub fn main() -> i32 {
    0
}

fn main() {
    std::process::exit(pgveil::ops::cli::main());
}

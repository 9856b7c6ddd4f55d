fn main() {
    // Signals are blocked before anything else runs (see `signals`).
    sharelink::signals::block_all();
    std::process::exit(sharelink::cli::main());
}

fn main() {
    // Signals are blocked before anything else runs (see `signals`).
    sharelink::signals::block_all();
    std::process::exit(sharelink::cli::main().code());
}

/// Runs from `.init_array`, before the Rust runtime sets SIGPIPE to
/// ignored, so the dispositions recorded are the ones sharelink was started
/// with (see `signals::record_inherited_dispositions`).
extern "C" fn record_inherited_dispositions() {
    sharelink::signals::record_inherited_dispositions();
}

#[used]
#[link_section = ".init_array"]
static RECORD_INHERITED_DISPOSITIONS: extern "C" fn() = record_inherited_dispositions;

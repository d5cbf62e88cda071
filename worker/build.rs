//! Gives kb-worker's binaries and tests the libtorch link arguments (rpath, torch_cuda)
//! that kb-embed's build script found; cargo does not propagate link args by itself.
fn main() {
    if let Ok(args) = std::env::var("DEP_KB_TORCH_LINK_ARGS") {
        for arg in args.split(' ').filter(|a| !a.is_empty()) {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}

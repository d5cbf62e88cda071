//! Finds libtorch's lib directory the way torch-sys does (the active Python's torch), so
//! that this crate's tests and every dependent binary get an rpath to it and CUDA is linked
//! even though nothing references torch_cuda symbols directly.
use std::path::PathBuf;
use std::process::Command;

/// What `code` prints, run by the active Python (the virtualenv's where one is active),
/// trimmed; `None` when it cannot run or prints nothing.
fn ask_python(code: &str) -> Option<String> {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python).args(["-c", code]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    ask_python("import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
        .map(PathBuf::from)
}

/// Compiles csrc/cuda_alloc.cpp (the CUDA caching allocator's empty-cache and statistics,
/// which tch does not expose) and csrc/onednn_linear.cpp (oneDNN's packed-weight linear
/// with a fused activation, likewise) against the headers of the libtorch in `lib_dir`.
/// The allocator shim uses c10's device-generic allocator interface only, so CPU-only
/// libtorch builds both.
fn build_shims(lib_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc/cuda_alloc.cpp");
    println!("cargo:rerun-if-changed=csrc/onednn_linear.cpp");
    let include = lib_dir.parent().map(|torch| torch.join("include"));
    let Some(include) =
        include.filter(|dir| dir.join("c10/core/CachingDeviceAllocator.h").exists())
    else {
        panic!(
            "libtorch at {} has no c10/core/CachingDeviceAllocator.h (torch >= 2.9 with headers \
             is required): run `make setup`",
            lib_dir.display()
        );
    };
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi())
        .warnings(false)
        .file("csrc/cuda_alloc.cpp")
        .file("csrc/onednn_linear.cpp")
        .compile("kb_torch_shims");
}

/// libtorch's C++ ABI ("0" or "1"): `LIBTORCH_CXX11_ABI` where set, else what the active
/// Python's torch says, else 1. The oneDNN shim hands libtorch `std::string`s, whose layout
/// depends on it.
fn cxx11_abi() -> &'static str {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI")
        .ok()
        .or_else(|| ask_python("import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"));
    match abi.as_deref().map(str::trim) {
        Some("0") => "0",
        _ => "1",
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(dir) = torch_lib_dir() else {
        println!("cargo:warning=libtorch not found: run `make setup` (binaries will need LD_LIBRARY_PATH)");
        return;
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    build_shims(&dir);
    // Without --no-as-needed the linker drops libtorch_cuda (no symbol is used directly)
    // and CUDA is silently unavailable at run time. Link args do not propagate, so
    // dependents repeat this from DEP_KB_TORCH_LINK_ARGS.
    let mut args = vec![format!("-Wl,-rpath,{}", dir.display())];
    if dir.join("libtorch_cuda.so").exists() {
        args.push("-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_string());
    }
    for arg in &args {
        println!("cargo:rustc-link-arg={arg}");
    }
    println!("cargo:link_args={}", args.join(" "));
}

//! The kernel seam: the Rust-for-Linux module compiles hmm-core's sources
//! unmodified by including each module by path
//! (`backend-kernel/module/hmm_core.rs`). Two things can drift without
//! cargo noticing, and would only show in the kernel build:
//!
//! * a module added to `src/` but not included there;
//! * a `crate::` path, which names hmm-core's crate root here but the
//!   module's crate root in the kernel build (hmm-core's modules refer to
//!   each other with `super::` only).

use std::fs;
use std::path::{Path, PathBuf};

/// Source files that the kernel build leaves out: the crate root (its
/// attributes are only valid at a crate root) and the test doubles.
const NOT_IN_KERNEL: [&str; 2] = ["lib.rs", "doubles.rs"];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of `src/`, by name, sorted.
fn sources() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(src_dir())
        .expect("hmm-core/src is readable")
        .map(|e| e.expect("directory entry").file_name())
        .map(|n| n.into_string().expect("UTF-8 file name"))
        .filter(|n| n.ends_with(".rs"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_module_is_included_by_the_kernel_module() {
    let glue = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backend-kernel/module/hmm_core.rs");
    let glue = fs::read_to_string(&glue).expect("backend-kernel/module/hmm_core.rs is readable");
    let lib = fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs is readable");
    let files = sources();
    assert!(files.len() > NOT_IN_KERNEL.len(), "no sources found");
    for name in &files {
        let module = name.trim_end_matches(".rs");
        if !NOT_IN_KERNEL.contains(&name.as_str()) {
            let include = format!("#[path = \"../../hmm-core/src/{name}\"]");
            assert!(
                glue.contains(&include),
                "backend-kernel/module/hmm_core.rs does not include src/{name}: add\n    \
                 {include}\n    pub mod {module};"
            );
        }
        // Every file is a module of the crate (no stray sources).
        if name != "lib.rs" {
            assert!(
                lib.contains(&format!("mod {module};")),
                "src/{name} is not declared in lib.rs"
            );
        }
    }
}

#[test]
fn no_crate_paths_in_kernel_included_sources() {
    for name in sources() {
        if NOT_IN_KERNEL.contains(&name.as_str()) {
            continue;
        }
        let text = fs::read_to_string(src_dir().join(&name)).expect("source is readable");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("crate::"),
                "src/{name}:{}: `crate::` names the kernel module's root in the kernel \
                 build; use a `super::` path\n{line}",
                i + 1
            );
        }
    }
}

//! Where the workspace's binaries are. Integration tests cannot depend on another
//! crate's binaries, so the test command builds them first (`cargo build --bins`)
//! and we find them next to the test executable, or in `$WEIR_BIN_DIR`.

use std::path::PathBuf;

pub fn path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("WEIR_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> or target/<profile>/<bin>
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: build the binaries first (`cargo build --bins`) or set WEIR_BIN_DIR",
        p.display()
    );
    p
}

//! Finding a `bitcoind`, or building one from the Bitcoin Core source that the crates.io crate
//! `libbitcoinkernel-sys` carries (design.md, "Regtest bitcoind (facts)": Debian ships no
//! bitcoind and no download host is reachable).
//!
//! The build is cached per machine outside the repository, keyed by the source crate's version,
//! and guarded by a file lock so that parallel tests and CI build it once.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::RegtestError;

/// The crates.io crate whose `bitcoin/` folder holds the Bitcoin Core source we build.
pub const SOURCE_CRATE: &str = "libbitcoinkernel-sys";
/// Its version; the cache is keyed by it.
pub const SOURCE_VERSION: &str = "0.4.1";
/// Debian packages the build needs.
pub const APT_PACKAGES: &str = "cmake g++ make pkg-config libboost-dev libevent-dev";

/// Path of a `bitcoind` to run, first found of:
/// 1. `$BITCOIND_EXE` (an error if it names no file);
/// 2. `bitcoind` on `PATH`;
/// 3. the per-machine cache, [`cache_dir`]`/bin/bitcoind`;
/// 4. a fresh build into that cache (about 10 minutes on 2 cores; progress on stderr).
///
/// Errors: [`RegtestError::MissingTool`] naming the apt packages when cmake, a compiler or a
/// library is missing; [`RegtestError::Build`] with the log's tail when a step fails.
pub fn bitcoind_exe() -> Result<PathBuf, RegtestError> {
    if let Some(exe) = std::env::var_os("BITCOIND_EXE") {
        let exe = PathBuf::from(exe);
        return if exe.is_file() {
            Ok(exe)
        } else {
            Err(RegtestError::Node(format!(
                "BITCOIND_EXE={} is not a file",
                exe.display()
            )))
        };
    }
    if let Ok(exe) = corepc_node::which::which("bitcoind") {
        return Ok(exe);
    }
    let cache = cache_dir()?;
    let exe = cache.join("bin").join("bitcoind");
    if exe.is_file() {
        return Ok(exe);
    }
    fs::create_dir_all(&cache).map_err(|e| io_error(&cache, e))?;
    let lock_path = cache.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| io_error(&lock_path, e))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "bitcoind: another process is building it; waiting for {}",
            lock_path.display()
        );
        lock.lock().map_err(|e| io_error(&lock_path, e))?;
    }
    // Someone else may have finished the build while we waited.
    if !exe.is_file() {
        build(&cache)?;
    }
    Ok(exe)
}

/// The per-machine cache of the build: `$T2T_CACHE_DIR`, else `$XDG_CACHE_HOME/t2t`, else
/// `$HOME/.cache/t2t`; then `bitcoin-core-libbitcoinkernel-sys-<version>`.
pub fn cache_dir() -> Result<PathBuf, RegtestError> {
    let base = if let Some(dir) = std::env::var_os("T2T_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("t2t")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache").join("t2t")
    } else {
        return Err(RegtestError::Node(
            "no cache directory: set T2T_CACHE_DIR, XDG_CACHE_HOME or HOME".into(),
        ));
    };
    Ok(base.join(format!("bitcoin-core-{SOURCE_CRATE}-{SOURCE_VERSION}")))
}

fn io_error(path: &Path, source: std::io::Error) -> RegtestError {
    RegtestError::Io {
        path: path.to_owned(),
        source,
    }
}

fn build(cache: &Path) -> Result<(), RegtestError> {
    check_build_tools()?;
    let source = fetch_source(cache)?;
    let build_dir = cache.join("build");
    let log_path = cache.join("build.log");
    let mut log = File::create(&log_path).map_err(|e| io_error(&log_path, e))?;
    eprintln!(
        "bitcoind: building Bitcoin Core from {} (about 10 minutes on 2 cores; log {})",
        source.display(),
        log_path.display()
    );
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(&source)
        .arg("-B")
        .arg(&build_dir)
        .args([
            "-DCMAKE_BUILD_TYPE=Release",
            "-DENABLE_WALLET=OFF",
            "-DWITH_EMBEDDED_ASMAP=OFF",
            "-DENABLE_IPC=OFF",
            "-DBUILD_TESTS=OFF",
            "-DBUILD_BENCH=OFF",
            "-DBUILD_FUZZ_BINARY=OFF",
            "-DWITH_ZMQ=OFF",
            "-DBUILD_GUI=OFF",
        ]);
    run_logged("configure", &mut configure, &mut log, &log_path)?;
    let mut compile = Command::new("cmake");
    compile
        .arg("--build")
        .arg(&build_dir)
        .args(["--target", "bitcoind", "bitcoin-cli", "-j"])
        .arg(jobs.to_string());
    run_logged("compile", &mut compile, &mut log, &log_path)?;

    let bin = cache.join("bin");
    fs::create_dir_all(&bin).map_err(|e| io_error(&bin, e))?;
    // bitcoin-cli first: bitcoind's presence is what marks the cache as complete.
    for name in ["bitcoin-cli", "bitcoind"] {
        let built = build_dir.join("bin").join(name);
        let partial = bin.join(format!(".{name}.partial"));
        fs::copy(&built, &partial).map_err(|e| io_error(&built, e))?;
        fs::rename(&partial, bin.join(name)).map_err(|e| io_error(&partial, e))?;
    }
    eprintln!("bitcoind: built into {}", bin.display());
    Ok(())
}

fn check_build_tools() -> Result<(), RegtestError> {
    let missing = |what: &str| RegtestError::MissingTool {
        what: what.to_owned(),
        apt: APT_PACKAGES,
    };
    for tool in ["cmake", "c++", "make", "pkg-config"] {
        if corepc_node::which::which(tool).is_err() {
            return Err(missing(tool));
        }
    }
    let libevent = Command::new("pkg-config")
        .args(["--exists", "libevent"])
        .status()
        .map_err(|_| missing("pkg-config"))?;
    if !libevent.success() {
        return Err(missing("libevent (pkg-config libevent)"));
    }
    if !Path::new("/usr/include/boost/version.hpp").exists()
        && !Path::new("/usr/local/include/boost/version.hpp").exists()
    {
        return Err(missing("Boost headers (boost/version.hpp)"));
    }
    Ok(())
}

/// Fetch the source crate through cargo, like any dependency, and return its `bitcoin/` folder.
fn fetch_source(cache: &Path) -> Result<PathBuf, RegtestError> {
    let project = cache.join("fetch");
    let src = project.join("src");
    fs::create_dir_all(&src).map_err(|e| io_error(&src, e))?;
    let manifest = project.join("Cargo.toml");
    fs::write(
        &manifest,
        format!(
            "[package]\nname = \"t2t-bitcoin-core-source\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\n{SOURCE_CRATE} = \"={SOURCE_VERSION}\"\n\n[workspace]\n"
        ),
    )
    .map_err(|e| io_error(&manifest, e))?;
    fs::write(src.join("lib.rs"), "").map_err(|e| io_error(&src, e))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut fetch = Command::new(&cargo);
    fetch.arg("fetch").arg("--manifest-path").arg(&manifest);
    let output = fetch.output().map_err(|e| RegtestError::Build {
        step: "cargo fetch".into(),
        log_tail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(RegtestError::Build {
            step: format!("cargo fetch {SOURCE_CRATE} {SOURCE_VERSION}"),
            log_tail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let metadata = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| RegtestError::Build {
            step: "cargo metadata".into(),
            log_tail: e.to_string(),
        })?;
    let json: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).map_err(|e| RegtestError::Build {
            step: "cargo metadata".into(),
            log_tail: format!("{e}: {}", String::from_utf8_lossy(&metadata.stderr)),
        })?;
    let manifest_path = json["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == SOURCE_CRATE && p["version"] == SOURCE_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| RegtestError::Build {
            step: "cargo metadata".into(),
            log_tail: format!("{SOURCE_CRATE} {SOURCE_VERSION} not among the packages"),
        })?;
    let source = Path::new(manifest_path)
        .parent()
        .expect("a manifest path has a parent")
        .join("bitcoin");
    if !source.join("CMakeLists.txt").is_file() {
        return Err(RegtestError::Build {
            step: "locate source".into(),
            log_tail: format!("{} has no CMakeLists.txt", source.display()),
        });
    }
    Ok(source)
}

/// Run a build step with its output appended to `log`, printing cmake's percentage to stderr
/// every 5 points.
fn run_logged(
    step: &str,
    command: &mut Command,
    log: &mut File,
    log_path: &Path,
) -> Result<(), RegtestError> {
    let failed = |log_tail: String| RegtestError::Build {
        step: step.to_owned(),
        log_tail,
    };
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start {command:?}: {e}")))?;
    let stderr = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut shown = 0u32;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        let _ = writeln!(log, "{line}");
        if let Some(percent) = progress_percent(&line) {
            if percent >= shown + 5 {
                shown = percent;
                eprintln!("bitcoind: {step} {percent}%");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| failed(format!("waiting for {command:?}: {e}")))?;
    let errors = stderr_thread.join().unwrap_or_default();
    let _ = write!(log, "{errors}");
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(failed(format!("{status}\n{}", tail.join("\n"))))
}

/// The percentage of a cmake progress line like `[ 42%] Building CXX object ...`.
fn progress_percent(line: &str) -> Option<u32> {
    let rest = line.strip_prefix('[')?;
    let (number, _) = rest.split_once("%]")?;
    number.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cmake_progress() {
        assert_eq!(progress_percent("[ 42%] Building CXX object x.o"), Some(42));
        assert_eq!(progress_percent("[100%] Built target bitcoind"), Some(100));
        assert_eq!(progress_percent("-- Configuring done"), None);
    }
}

//! The control plane's container image (packaging/control/Containerfile), built and run
//! with podman.

use std::path::Path;
use std::process::Command;

use openbox_e2e::{Cli, bin, engines, free_port, wait_until};

/// podman with the test engines' settings; its output, or a panic with its words.
fn podman(args: &[&str]) -> String {
    let out = openbox_e2e::podman(args);
    assert!(out.code == 0, "podman {args:?}: {}", out.stderr);
    out.stdout
}

/// A base image with just the C library the binary needs, from this machine (no registry
/// is reachable here; a real build uses Debian's slim image).
fn base_image(binary: &Path, dir: &Path) -> String {
    let tree = dir.join("base");
    for d in ["tmp", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libs = ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')));
    for lib in libs {
        let to = tree.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let name = "localhost/openbox-test-base:1";
    let tar = Command::new("tar").arg("-C").arg(&tree).args(["-c", "."]).output().unwrap();
    assert!(tar.status.success());
    let mut import = Command::new("podman")
        .env("CONTAINERS_CONF", &engines().containers_conf)
        .args(["import", "-q", "-", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());
    name.to_owned()
}

#[test]
fn the_control_plane_image_builds_with_podman_and_serves_from_a_container() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("state")).unwrap();
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/control");
    std::fs::copy(packaging.join("Containerfile"), ctx.join("Containerfile")).unwrap();
    std::fs::copy(bin("openbox-control"), ctx.join("openbox-control")).unwrap();
    let base = base_image(&bin("openbox-control"), dir.path());
    let image = format!("localhost/openbox-control-test:{}", &trust::token::random_id()[..8]);
    let ctx_arg = ctx.display().to_string();
    podman(&["build", "-q", "--pull=never", "--build-arg", &format!("BASE={base}"), "-t", &image, &ctx_arg]);
    let user = podman(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user.trim(), "10001:10001", "the image runs unprivileged");

    let port = free_port();
    let name = format!("openbox-control-test-{port}");
    let addr = format!("127.0.0.1:{port}");
    // The container and the image go however the test ends.
    let _gone = Removed { container: name.clone(), image: image.clone() };
    podman(&["run", "-d", "--rm", "--network", "host", "--name", &name, &image, "--addr", &addr]);
    let mut logs = String::new();
    wait_until("the control plane in the container prints its login command", || {
        logs = podman(&["logs", &name]);
        logs.contains("openbox login --server")
    });
    // Its login token is in a private file in the container, which the line names.
    let login = logs.lines().find(|l| l.contains("openbox login --server")).unwrap();
    let file = openbox_e2e::flag_value(login, "--token-file").expect("the token file");
    let copied = dir.path().join("admin-token");
    podman(&["cp", &format!("{name}:{file}"), copied.to_str().unwrap()]);
    let cli = Cli::new();
    cli.run(&["login", "--server", &format!("http://{addr}"), "--token-file", copied.to_str().unwrap()]).ok();
    assert_eq!(cli.run(&["whoami", "--json"]).ok().json()["user"], "admin");
    // Its files are in the image's state directory (the volume to keep).
    let out = dir.path().join("state-out");
    podman(&["cp", &format!("{name}:/var/lib/openbox/control"), &out.display().to_string()]);
    for file in ["ca_key", "openbox.db"] {
        assert!(out.join(file).exists(), "no {file} in /var/lib/openbox/control");
    }
}

/// Removes a container and its image when dropped.
struct Removed {
    container: String,
    image: String,
}

impl Drop for Removed {
    fn drop(&mut self) {
        podman(&["rm", "-f", &self.container]);
        podman(&["rmi", "-f", &self.image]);
    }
}

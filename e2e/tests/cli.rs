//! The command line itself: help that teaches, and usage errors that exit 2.

use openbox_e2e::Cli;

#[test]
fn help_names_the_roles_and_the_run_form() {
    let out = Cli::new().run(&["--help"]).ok();
    for needle in ["-t, --tag", "-n, --node", "login", "nodes", "control", "agent", "up", "openbox -t TAG CMD"] {
        assert!(out.stdout.contains(needle), "--help should mention {needle:?}:\n{}", out.stdout);
    }
    assert!(Cli::new().run(&["control", "--help"]).ok().stdout.contains("--ca"));
    assert!(Cli::new().run(&["agent", "--help"]).ok().stdout.contains("--token"));
    assert!(Cli::new().run(&["--version"]).ok().stdout.starts_with("openbox "));
}

#[test]
fn global_flags_may_come_before_the_subcommand() {
    let cli = Cli::new();
    let out = cli.run(&["--json", "--no-daemon", "nodes"]).fails_with(1, "not logged in");
    assert!(out.stdout.is_empty());
    cli.run(&["--no-daemon", "--json", "-t", "x"]).fails_with(2, "no command given");
}

#[test]
fn usage_errors_exit_2_and_say_what_to_do() {
    let cli = Cli::new();
    cli.run(&["-t", "x"]).fails_with(2, "no command given");
    cli.run(&["-t", "x", "-n", "y", "true"]).fails_with(2, "cannot be used with");
    cli.run(&["--isolate", "vm:x", "-t", "x", "true"]).fails_with(2, "invalid isolation");
    cli.run(&["-t", "bad tag", "true"]).fails_with(2, "may hold only");
    cli.run(&["node", "token", "--ttl", "5 fortnights"]).fails_with(2, "write it as 90s, 1m30s");
    cli.run(&["frobnicate"]).fails_with(2, "\"frobnicate\" is not an openbox command");
    cli.run(&["nods"]).fails_with(2, "did you mean `openbox nodes`?");
}

//! `openbox -t TAG --all CMD`: one command on every node of a tag, as pdsh does.

use openbox_e2e::{Agent, Cli, ControlPlane, wait_until};

/// A fleet tagged `fan`: fa and fb online (fb also `odd`), fc enrolled and then gone.
fn fleet() -> (ControlPlane, Cli, Agent, Agent, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let fa = Agent::enroll_with(&cp, &admin.enroll_token(&["fan"]), &["--name", "fa"]);
    let fb = Agent::enroll_with(&cp, &admin.enroll_token(&["fan", "odd"]), &["--name", "fb"]);
    let mut fc = Agent::enroll_with(&cp, &admin.enroll_token(&["fan"]), &["--name", "fc"]);
    fc.kill();
    wait_until("fc offline", || admin.node(&fc.node_id).unwrap()["online"] == false);
    (cp, admin, fa, fb, fc)
}

/// Prints `hello` and `warn` on stderr everywhere; exits 3 on `bad`'s node.
fn script(bad: &Agent) -> String {
    format!("echo hello; echo warn >&2; if [ \"$OPENBOX_NODE\" = {} ]; then exit 3; fi", bad.node_id)
}

#[test]
fn every_node_of_a_tag_runs_it_with_prefixed_lines_a_summary_and_pdshs_exit_code() {
    let (_cp, admin, _fa, fb, _fc) = fleet();
    let out = admin.run(&["-t", "fan", "--all", &script(&fb)]);
    assert_eq!(out.code, 255, "a node was unreachable: {out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["fa: hello", "fb: hello"]);
    assert!(out.stderr.contains("fa: warn\n") && out.stderr.contains("fb: warn\n"), "{out:?}");
    let summary = out.stderr.lines().last().unwrap();
    assert_eq!(summary, "openbox: 3 nodes: 1 ok, 1 failed (fb: exit 3), 1 unreachable (fc: offline)");

    // Without the offline node, the exit code is the largest remote one.
    let odd = admin.run(&["-t", "fan", "-t", "odd", "--all", &script(&fb)]);
    assert_eq!(odd.code, 3, "{odd:?}");
    assert_eq!(odd.stdout, "fb: hello\n", "only nodes carrying every tag");
    let none = admin.run(&["-t", "odd", "--all", "--no-prefix", "echo", "plain"]);
    assert_eq!((none.code, none.stdout.as_str()), (0, "plain\n"));
    admin.run(&["-t", "nosuch", "--all", "true"]).fails_with(255, "no node you may use carries tag \"nosuch\"");
}

#[test]
fn json_gives_one_result_per_node_and_group_merges_identical_output() {
    let (_cp, admin, fa, fb, fc) = fleet();
    let out = admin.run(&["-t", "fan", "--all", "--json", &script(&fb)]);
    assert_eq!(out.code, 255);
    let results = out.json();
    let by_node = |name: &str| results.as_array().unwrap().iter().find(|r| r["node"] == name).cloned().unwrap();
    assert_eq!(by_node(&fa.name)["exit_code"], 0);
    assert_eq!(by_node(&fa.name)["stdout"], "hello\n");
    assert_eq!(by_node(&fa.name)["stderr"], "warn\n");
    assert_eq!(by_node(&fb.name)["exit_code"], 3);
    assert_eq!(by_node(&fc.name)["error"], "offline");
    assert!(by_node(&fa.name)["duration_ms"].is_u64());
    assert!(by_node(&fa.name)["signal"].is_null());
    let killed =
        admin.run(&["-t", "fan", "--all", "--json", &format!("[ $OPENBOX_NODE != {} ] || kill -KILL $$", fa.node_id)]);
    let killed = killed.json();
    let fa_run = killed.as_array().unwrap().iter().find(|r| r["node"] == fa.name.as_str()).unwrap();
    assert_eq!(
        (&fa_run["signal"], &fa_run["exit_code"]),
        (&serde_json::json!("KILL"), &serde_json::json!(137)),
        "{killed}"
    );

    let grouped = admin.run(&["-t", "fan", "--all", "--group", "echo same; echo $OPENBOX_NODE >&2"]);
    let rule = "-".repeat(16);
    assert!(grouped.stdout.starts_with(&format!("{rule}\nfa,fb\n{rule}\nsame\n")), "{grouped:?}");
    assert!(grouped.stderr.contains(&format!("{rule}\nfa\n{rule}\n{}\n", fa.node_id)), "{grouped:?}");
}

#[test]
fn at_most_fanout_nodes_run_at_once_and_timeout_applies_per_node() {
    let (_cp, admin, _fa, _fb, _fc) = fleet();
    // With one at a time the two sleeps follow each other: each sees no other running.
    let marker = std::env::temp_dir().join(format!("obfan-{}", std::process::id()));
    let cmd = format!(
        "if [ -e {m} ]; then echo overlap; fi; touch {m}; sleep 0.3; rm -f {m}; echo done",
        m = marker.display()
    );
    let out = admin.run(&["-t", "fan", "--all", "--fanout", "1", "--no-prefix", &cmd]);
    assert_eq!(out.stdout, "done\ndone\n", "{out:?}");
    let slow = admin.run(&["-t", "odd", "--all", "--timeout", "1s", "sleep 30"]);
    assert_eq!(slow.code, 124, "{slow:?}");
    assert!(slow.stderr.contains("1 timed out (fb: exit 124)"), "{slow:?}");
}

#[test]
fn max_output_keeps_each_streams_head_and_tail_with_a_mark_and_json_says_which_were_cut() {
    let (_cp, admin, fa, fb, _fc) = fleet();
    // `seq 1 1000` prints 3,893 bytes: 10 kept at each end.
    let out = admin.run(&["-n", &fa.name, "--max-output", "20", "seq 1 1000; echo short >&2"]).ok();
    assert_eq!(out.stdout, "1\n2\n3\n4\n5\n[… 3873 bytes omitted …]\n\n999\n1000\n");
    assert_eq!(out.stderr, "short\n", "a stream under the cap is untouched");

    let all = admin.run(&["-t", "odd", "--all", "--json", "--max-output", "1k", "seq 1 1000; echo short >&2"]).ok();
    let result = &all.json()[0];
    assert_eq!(result["node"], fb.name.as_str());
    assert_eq!(result["truncated"], serde_json::json!({"stdout": true, "stderr": false}));
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("1\n2\n") && stdout.contains("bytes omitted") && stdout.ends_with("1000\n"));
    assert!(stdout.len() < 1100, "{}", stdout.len());
    admin.run(&["-n", &fa.name, "--max-output", "1", "true"]).fails_with(2, "at least 2 bytes");
}

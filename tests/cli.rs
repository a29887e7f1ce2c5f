//! The command line as a new user meets it: what they type first, and what they are told.
//! Issue 11, "The CLI's first five minutes"; issue 8, "one table of settings".

mod support;

use std::process::{Command, Output};

use support::*;

fn oxicorn(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        // CI runs as root; the --user policy has its own tests (tests/identity.rs).
        .env("OXICORN_ALLOW_ROOT", "true")
        .current_dir(cwd)
        .output()
        .expect("run oxicorn")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_directory_alone_is_served_and_static_options_need_no_service_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/a.txt"), "A").unwrap();
    let s = Oxicorn::start_with(
        dir,
        &["www", "-b", "127.0.0.1:0", "-w", "1", "--no-listing"],
        &[],
    );
    s.wait_ready(1, 1);
    let serving = s.wait_for_line("serving ");
    assert!(serving.contains("/www on http://127.0.0.1:"), "{serving}");
    let addr = s.tcp_addr();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\nA"),
        "{out}"
    );
    // --no-listing took effect without the word `static`.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

#[test]
fn help_says_how_to_see_each_services_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = oxicorn(&["--help"], dir.path());
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("oxicorn SERVICE --help"), "{text}");
    assert!(
        text.contains("--keep-alive"),
        "static options at the top: {text}"
    );
    let out = oxicorn(&["chat", "--help"], dir.path());
    let text = stdout(&out);
    assert!(
        text.contains("--max-line") && !text.contains("--keep-alive"),
        "{text}"
    );
}

#[test]
fn connect_shows_and_takes_only_its_own_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = oxicorn(&["connect", "--help"], dir.path());
    let text = stdout(&out);
    assert!(
        text.contains("--timeout") && text.contains("[default: 10]"),
        "{text}"
    );
    assert!(
        !text.contains("--workers") && !text.contains("--bind"),
        "{text}"
    );
    for args in [
        &["connect", "127.0.0.1:1", "--workers", "2"][..],
        &["-w", "2", "connect", "127.0.0.1:1"],
    ] {
        let out = oxicorn(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_pid_path_of_digits_is_refused_with_a_hint_and_port_is_shorthand() {
    let dir = tempfile::tempdir().unwrap();
    let out = oxicorn(&["-p", "8080"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean --bind 127.0.0.1:8080"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("8080").exists());
    let out = oxicorn(&["--port", "8080", "--check-config"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("bind                     127.0.0.1:8080"));
}

#[test]
fn address_mistakes_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    for (bind, says) in [
        (
            "8000",
            "is a bare port: write 127.0.0.1:8000 (this machine only) or :8000",
        ),
        (
            "http://127.0.0.1:8000",
            "is a URL: drop the scheme and write 127.0.0.1:8000",
        ),
        ("[::1]", "`[::1]` has no port"),
    ] {
        let out = oxicorn(&["echo", "-b", bind, "--check-config"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{bind}");
        assert!(stderr(&out).contains(says), "{bind}: {}", stderr(&out));
        let out = oxicorn(&["connect", bind], dir.path());
        assert_eq!(out.status.code(), Some(1), "{bind}");
        assert!(
            stderr(&out).contains(says),
            "connect {bind}: {}",
            stderr(&out)
        );
    }
    // `:PORT` means every interface.
    let out = oxicorn(&["echo", "-b", ":8000", "--check-config"], dir.path());
    assert!(stdout(&out).contains("0.0.0.0:8000"), "{}", stdout(&out));
}

#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = oxicorn(&["-c", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let out = oxicorn(
        &["echo", "-b", "127.0.0.1:0", "-p", "no/such/dir/pid"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn every_problem_in_a_config_file_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "bad.toml",
        "worker = 4\nkeepalive = 2\n[[service]]\nkind = \"chat\"\nroot = \"/srv\"\n",
    );
    let out = oxicorn(&["-c", "bad.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("line 1: unknown key `worker` (did you mean `workers`?)"),
        "{err}"
    );
    assert!(
        err.contains("line 2: unknown key `keepalive` (did you mean `keep_alive`?)"),
        "{err}"
    );
    assert!(
        err.contains("line 5: `root` is not a setting of the chat service"),
        "{err}"
    );
    // The one-service shape: a key of another service is refused, not ignored.
    write_file(dir.path(), "echo.toml", "keep_alive = 2\n");
    let out = oxicorn(&["echo", "-c", "echo.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a setting of the echo service"),
        "{}",
        stderr(&out)
    );
}

/// `kind = "app"` is a program's own app: the `oxicorn` command has none, so its check refuses
/// the file (exit 1, the table's line) rather than passing it and halting at boot (exit 3).
#[test]
fn an_app_service_is_refused_by_the_oxicorn_command() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "app.toml",
        "[[service]]\nkind = \"static\"\nbind = \"127.0.0.1:0\"\n\
         [[service]]\nkind = \"app\"\nbind = \"127.0.0.1:0\"\n",
    );
    let out = oxicorn(&["-c", "app.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("needs a program that embeds oxicorn") && err.contains("line 4"),
        "{err}"
    );
}

/// Values with a syntax of their own (an access log format, a list of networks) are checked
/// where the file is read, so they too come with their line and beside every other problem,
/// not alone and without a line after the rest was fixed.
#[test]
fn a_bad_log_format_or_network_list_is_reported_with_its_line_and_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "bad.toml",
        "access_logformat = \"%(zz)s\"\nworker = 4\n[[service]]\nkind = \"static\"\n\
         access_logformat = \"50% %(h)s\"\n",
    );
    let out = oxicorn(&["-c", "bad.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        "line 1: invalid access_logformat: unknown atom `%(zz)s`",
        "line 2: unknown key `worker`",
        "line 5: invalid access_logformat: `%` at byte 2 starts no atom",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// gunicorn's header atoms, malformed: an unclosed `%({`, braces with no header name, and
/// `{name}e` (a WSGI environ variable, which no oxicorn service has) are refused with the
/// line in a file and the option on the command line, as any other format error.
#[test]
fn a_malformed_header_atom_is_refused_with_its_line_or_option() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "atoms.toml",
        "access_logformat = \"%(h)s %({i\"\n[[service]]\nkind = \"static\"\n\
         access_logformat = \"%({}i)s\"\n[[service]]\nkind = \"echo\"\n[[service]]\n\
         kind = \"static\"\nbind = \"127.0.0.1:0\"\naccess_logformat = \"%({REMOTE_USER}e)s\"\n",
    );
    let out = oxicorn(&["-c", "atoms.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        "line 1: invalid access_logformat: `%` at byte 6 starts no atom",
        "line 4: invalid access_logformat: `%({}i)s` names no header",
        "line 10: invalid access_logformat: `%({REMOTE_USER}e)s` is a WSGI environ variable",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    for (format, says) in [
        ("%({}o)s", "`%({}o)s` names no header"),
        ("%({a b}i)s", "`%({a b}i)s` names no header"),
        (
            "%({HTTP_HOST}e)s",
            "`%({HTTP_HOST}e)s` is a WSGI environ variable",
        ),
    ] {
        let out = oxicorn(
            &["static", "--access-logformat", format, "--check-config"],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(1), "{format}");
        let err = stderr(&out);
        assert!(
            err.contains("access-logformat") && err.contains(says),
            "{format}: {err}"
        );
    }
    // Well-formed, in either case, they pass.
    let out = oxicorn(
        &[
            "static",
            "--access-logformat",
            "%({User-Agent}i)s %({content-type}o)s",
            "--check-config",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `OXICORN_BIND` takes one address; a list there (or in one --bind) is named as a list, not
/// as an IPv6 address missing its brackets.
#[test]
fn several_addresses_in_one_bind_are_refused_as_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--check-config"])
        .env("OXICORN_BIND", "127.0.0.1:8001,127.0.0.1:8002")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("holds several addresses"), "{err}");
    assert!(!err.contains("IPv6"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_configuration_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--no-such-flag"][..],
        &["echo", "--keep-alive", "2"],
        &["echo", "-w"],
    ] {
        let out = oxicorn(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    for args in [
        &["echo", "-w", "0"][..],
        &["nowhere"],
        &["echo", "-t", "soon"],
    ] {
        let out = oxicorn(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    }
    // A negative number is a value the option refuses by its own rule, not "unexpected
    // argument '-1'" with a tip to write `-- -1`.
    for (args, says) in [
        (
            &["--timeout", "-1"][..],
            "invalid timeout: invalid duration `-1`",
        ),
        (&["echo", "--workers", "-3"], "invalid workers: `-3`"),
    ] {
        let out = oxicorn(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

/// A bad option value is a configuration error (exit 1, "invalid OPTION: ..."), whichever
/// option it is and wherever it comes from: `--port abc` was refused by clap (exit 2) while
/// `--workers abc` was ours (exit 1). A malformed command line is still a usage error (2).
#[test]
fn a_bad_value_of_any_option_exits_1_and_a_malformed_command_line_2() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["--port", "abc"][..],
            "invalid port: `abc` is not a port number",
        ),
        (&["echo", "--port", "99999"], "invalid port: `99999`"),
        (&["--port", "-1", "-w", "2"], "invalid port: `-1`"),
        (&["--workers", "abc"], "invalid workers: `abc`"),
        (&["--keep-alive", "x"], "invalid keep-alive"),
        (&["--bind", "nope"], "invalid bind"),
        (&["--log-level", "loud"], "invalid log-level"),
        (&["--access-logformat", "%(z)s"], "invalid access-logformat"),
        (
            &["-c", ""],
            "cannot read config file '': an empty path: give -c the path of a TOML file",
        ),
        (&["--pid", ""], "invalid pid"),
    ] {
        let mut all = args.to_vec();
        all.push("--check-config");
        let out = oxicorn(&all, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = Command::new(BIN)
        .arg("--check-config")
        .env("OXICORN_WORKERS", "abc")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid workers"), "{}", stderr(&out));
    for args in [
        &["--port"][..],
        &["--port", "8080", "--nope"],
        &["connect", "127.0.0.1:1", "--timeout", "soon"],
        &["completions", "tcsh"],
    ] {
        let out = oxicorn(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn completions_and_a_man_page_come_from_the_same_definition() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = oxicorn(&["completions", shell], dir.path());
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("graceful-timeout"), "{shell}");
    }
    let out = oxicorn(&["man"], dir.path());
    assert!(out.status.success());
    let page = stdout(&out);
    assert!(
        page.contains(".TH oxicorn") && page.contains("graceful\\-timeout"),
        "{page}"
    );
}

/// A bad value from an `OXICORN_*` environment variable is refused as a flag's is (exit 1,
/// "invalid OPTION: ..."), and the message names the variable and its value: it said only
/// "invalid workers", and a user who typed no `--workers` looked for it on the command line.
/// A flag given as well wins over the variable, so the variable's value is not checked.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, says) in [
        (
            "OXICORN_WORKERS",
            "abc",
            "invalid workers: `abc` is not a whole number",
        ),
        (
            "OXICORN_ACCESS_LOGFORMAT",
            "%({x}e)s",
            "invalid access-logformat: `%({x}e)s`",
        ),
        ("OXICORN_KEEP_ALIVE", "soon", "invalid keep-alive"),
    ] {
        let out = Command::new(BIN)
            .args(["static", "--check-config"])
            .env(var, value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{var}: {err}");
        assert!(
            err.contains(&format!("(from {var}={value:?})")),
            "{var}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["static", "--workers", "2", "--check-config"])
        .env("OXICORN_WORKERS", "abc")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The command line's own bad value is reported without a variable.
    let out = oxicorn(&["--workers", "abc", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).contains("OXICORN_"), "{}", stderr(&out));
}

/// A switch's variable (`OXICORN_NO_LISTING`) is read as a file's value is: `1`, `yes`,
/// `off`, any case. Only `true` and `false` passed (clap's parser), anything else was a usage
/// error (exit 2) that named `--no-listing`, which the user had not typed; and a `false` was
/// dropped, so it did not override the file's `true` as any other variable's value does.
#[test]
fn a_switch_from_the_environment_takes_what_a_file_takes() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "on.toml", "no_listing = true\n");
    let run = |value: &str, args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--print-config")
            .env("OXICORN_NO_LISTING", value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("no_listing = "))
            .map(str::to_string);
        (out.status.code(), shown, stderr(&out))
    };
    for (value, want) in [
        ("1", "true"),
        ("yes", "true"),
        ("TRUE", "true"),
        ("on", "true"),
        ("0", "false"),
        ("false", "false"),
        ("No", "false"),
    ] {
        let (code, shown, err) = run(value, &["static"]);
        assert_eq!(code, Some(0), "{value}: {err}");
        assert_eq!(
            shown.as_deref(),
            Some(&*format!("no_listing = {want}")),
            "{value}"
        );
    }
    // The variable wins over the file, `false` too; the flag wins over both.
    let (_, shown, err) = run("0", &["static", "-c", "on.toml"]);
    assert_eq!(shown.as_deref(), Some("no_listing = false"), "{err}");
    let (_, shown, err) = run("0", &["static", "-c", "on.toml", "--no-listing"]);
    assert_eq!(shown.as_deref(), Some("no_listing = true"), "{err}");
    for value in ["maybe", ""] {
        let (code, _, err) = run(value, &["static"]);
        assert_eq!(code, Some(1), "{value:?}: {err}");
        assert!(
            err.contains(&format!(
                "invalid no-listing: `{value}` is not true or false \
                 (from OXICORN_NO_LISTING={value:?})"
            )),
            "{value:?}: {err}"
        );
    }
}

/// An empty access log format, from any source, is refused (exit 1): it was taken, and every
/// request wrote an empty line (`OXICORN_ACCESS_LOGFORMAT=` set by mistake, say).
#[test]
fn an_empty_access_log_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "empty.toml",
        "workers = 1\naccess_logformat = \" \"\n",
    );
    let says = "an empty format would write an empty line per request";
    let out = oxicorn(&["--access-logformat", "", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("invalid access-logformat: {says}")),
        "{}",
        stderr(&out)
    );
    let out = oxicorn(&["-c", "empty.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("line 2: invalid access_logformat: {says}")),
        "{}",
        stderr(&out)
    );
    let out = Command::new(BIN)
        .arg("--check-config")
        .env("OXICORN_ACCESS_LOGFORMAT", "")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
}

/// With `[[service]]` tables, a service option given outside them is refused naming the key
/// to write in the table and the option as the user gave it: `OXICORN_NO_LISTING`, not a
/// `--no-listing` they never typed (the message said "set --no-listing in the table", a
/// flag's spelling for a TOML key).
#[test]
fn a_service_option_outside_the_tables_is_named_as_given() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "services.toml",
        "[[service]]\nkind = \"static\"\nbind = \"127.0.0.1:0\"\n",
    );
    let out = Command::new(BIN)
        .args(["-c", "services.toml", "--check-config"])
        .env("OXICORN_NO_LISTING", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "services.toml declares [[service]] tables: set no_listing in the table it applies \
             to, not OXICORN_NO_LISTING"
        ),
        "{}",
        stderr(&out)
    );
    let out = oxicorn(
        &["-c", "services.toml", "--keep-alive", "3", "--check-config"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("set keep_alive in the table it applies to, not --keep-alive"),
        "{}",
        stderr(&out)
    );
}

/// `--proc-name` (`-n`, `proc_name`) becomes every process's title and `comm`: a line break
/// or an escape sequence in it was taken as given, so `/proc/PID/comm` read
/// `evil\nroot 1 x\x1b[` and `pgrep -l`, `top` and any script reading `comm` printed a forged
/// line; a bidirectional control reorders what `ps` shows. Refused, as a configuration error
/// naming the option, the variable or the file's line, as any other bad value is; ordinary
/// names (spaces, non-ASCII letters) pass.
#[test]
fn a_proc_name_with_a_control_character_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "evil\nroot 1 bash",
        "x\x1b[31mred",
        "tab\there",
        "abc\u{202e}fed",
    ] {
        let out = oxicorn(&["static", "-n", bad, "--check-config"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("invalid proc-name"), "{bad:?}: {err}");
        assert!(err.contains("control"), "{bad:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["static", "--check-config"])
        .env("OXICORN_ALLOW_ROOT", "true")
        .env("OXICORN_PROC_NAME", "a\nb")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("(from OXICORN_PROC_NAME=\"a\\nb\")"),
        "{}",
        stderr(&out)
    );
    write_file(dir.path(), "t.toml", "proc_name = \"a\\u001bb\"\n");
    let out = oxicorn(&["static", "-c", "t.toml", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("proc_name"), "{}", stderr(&out));
    for good in ["my app", "wëb✓", "web-1.2"] {
        let out = oxicorn(&["static", "-n", good, "--check-config"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{good:?}: {}", stderr(&out));
    }
}

/// A blank `proc_name` (an empty `OXICORN_PROC_NAME=`, `-n ''`) is unset: the titles use the
/// program's name, and `--check-config` shows it as when nothing was given, not as `""`.
#[test]
fn a_blank_proc_name_is_shown_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["static", "--check-config"])
        .env("OXICORN_ALLOW_ROOT", "true")
        .env("OXICORN_PROC_NAME", "")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("proc_name"), "{}", stdout(&out));
    let out = oxicorn(&["static", "-n", " ", "--check-config"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("proc_name"), "{}", stdout(&out));
    let out = oxicorn(&["static", "-n", "web", "--check-config"], dir.path());
    assert!(
        stdout(&out).contains("proc_name                \"web\""),
        "{}",
        stdout(&out)
    );
}

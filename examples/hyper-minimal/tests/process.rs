//! hyper-minimal as a process: the gate's decisions and the peer address.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use tokengate_tests::process::{start_example, temp_dir};

/// A raw HTTP/1.1 exchange; returns the status line and the body.
fn get(addr: &str, token: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.lines().next().unwrap().to_owned();
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn one_route_behind_the_gate_sees_the_peer_address() {
    let dir = temp_dir("hyper-minimal");
    let mut server = start_example(
        env!("CARGO_BIN_EXE_hyper-minimal"),
        &dir,
        "hyper-minimal listening on ",
    );
    let (status, body) = get(&server.addr, Some(&server.token));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "hello demo-user from 127.0.0.1\n");
    let (status, _) = get(&server.addr, None);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, _) = get(&server.addr, Some("tg_notatokenatall"));
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    assert!(server.terminate(), "a clean shutdown on SIGTERM");
}

#[test]
fn audit_records_are_visible_on_stderr() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_hyper-minimal"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = stdout
        .lines()
        .map(Result::unwrap)
        .find_map(|line| {
            line.strip_prefix("hyper-minimal listening on ")
                .map(str::to_owned)
        })
        .unwrap();
    let (status, _) = get(&addr, None);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("tokengate::audit"), "{line}");
    assert!(line.contains("missing_token"), "{line}");
}

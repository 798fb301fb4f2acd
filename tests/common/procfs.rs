//! What `/proc` says about ports and processes, for tests that check a
//! drill left nothing behind (no connection is made, no signal sent).

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp).
pub fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == want && f[3] == "0A"
    })
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rfind(')').is_some_and(|i| s[i + 1..].split_whitespace().next() != Some("Z")),
        Err(_) => false,
    }
}

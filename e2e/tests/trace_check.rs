//! The check every tailnet test relies on: reading an `strace -yy` log for packets
//! addressed beyond 127.0.0.0/8.

use openbox_e2e::beyond_loopback;

#[test]
fn the_trace_check_sees_sends_beyond_loopback_and_ignores_written_bytes() {
    let lines = [
        r#"12 sendto(7<UDP:[0.0.0.0:41641]>, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(3478), sin_addr=inet_addr("192.0.2.9")}, 16) = 1"#,
        r#"12 write(9<UDP:[10.0.0.2:5000->8.8.8.8:53]>, "q", 1) = 1"#,
        r#"12 connect(8<TCP:[10.0.0.2:33000]>, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("198.51.100.7")}, 16) = -1"#,
        r#"12 write(6<TCPv6:[[::1]:40000->[2001:db8::5]:443]>, "x", 1) = 1"#,
        // A DNS query for one of Tailscale's own hosts, as a build with captive-portal
        // detection sent it.
        r#"18360 sendmmsg(31<UDP:[192.0.2.2:56613->10.255.255.53:53]>, [{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\31\271\1\0\0\1\0\0\0\0\0\0\5login\ttailscale\3com"..., iov_len=37}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=37}], 2, MSG_NOSIGNAL) = 2"#,
    ];
    for l in lines {
        assert_eq!(beyond_loopback(l).len(), 1, "{l}");
    }
    let fine = [
        r#"12 write(5<pipe:[99]>, "peer 100.64.0.2 at 192.0.2.9", 28) = 28"#,
        r#"12 connect(7<UDP:[0.0.0.0:0]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.1")}, 16) = 0"#,
        r#"12 sendto(7<UDP:[127.0.0.1:41641]>, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(3478), sin_addr=inet_addr("127.0.0.1")}, 16) = 1"#,
        r#"12 write(6<TCP:[127.0.0.1:40000->127.0.0.1:8080]>, "GET /", 5) = 5"#,
        r#"12 write(6<TCPv6:[[::1]:40000->[::1]:8080]>, "GET /", 5) = 5"#,
    ];
    for l in fine {
        assert!(beyond_loopback(l).is_empty(), "{l}");
    }
}

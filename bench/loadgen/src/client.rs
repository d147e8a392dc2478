//! The client side of the load: connecting over ws or wss, logging in, and the messages a
//! browser sends (candidates, offers), stamped with their send time.

use super::*;

/// Connects from one of several loopback source addresses (one address has only ~28,000
/// ephemeral ports), over TLS when the target has it, and upgrades to a WebSocket.
pub(crate) async fn connect(
    server: Endpoint,
    tls: &tokio_rustls::TlsConnector,
    n: usize,
) -> anyhow::Result<Ws> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 200) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], server.port)))
        .await?;
    tcp.set_nodelay(true)?;
    let (io, scheme): (Box<dyn Io>, _) = if server.tls {
        let name = ServerName::try_from("localhost")?;
        (Box::new(tls.connect(name, tcp).await?), "wss")
    } else {
        (Box::new(tcp), "ws")
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let url = format!("{scheme}://localhost:{}/", server.port);
    let (ws, _) = client_async_with_config(url, io, Some(config)).await?;
    Ok(ws)
}

pub(crate) async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => return Err(err.into()),
            Ok(None) => bail!("the server closed the socket"),
            Err(_) => bail!("no message within 10 s"),
        }
    }
}

pub(crate) async fn login(ws: &mut Ws, name: &str) -> anyhow::Result<()> {
    let message = format!(r#"{{"type":"login","username":"{name}"}}"#);
    ws.send(Message::text(message)).await?;
    let reply = next_text(ws).await?;
    if !reply.contains("\"success\":true") {
        bail!("login as {name} refused: {reply}");
    }
    Ok(())
}

pub(crate) fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A realistic ICE candidate (~230 bytes on the wire), stamped with its send time.
pub(crate) fn candidate(to: &str, stamp: u64) -> String {
    format!(
        r#"{{"type":"candidate","candidate":{{"candidate":"candidate:842163049 1 udp 1677729535 192.0.2.44 54321 typ srflx raddr 10.0.0.5 rport 54321 generation 0 ufrag sK3b network-cost 999","sdpMid":"0","sdpMLineIndex":0,"t":{stamp}}},"otherUsername":"{to}"}}"#
    )
}

/// A realistic SDP offer (~3 KB), stamped with its send time.
pub(crate) fn offer(to: &str, stamp: u64) -> String {
    let mut sdp = String::from(
        "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0 1\\r\\n",
    );
    while sdp.len() < 2900 {
        sdp.push_str("a=rtpmap:111 opus/48000/2\\r\\na=fmtp:111 minptime=10;useinbandfec=1\\r\\n");
    }
    format!(
        r#"{{"type":"offer","offer":{{"type":"offer","sdp":"{sdp}","t":{stamp}}},"otherUsername":"{to}"}}"#
    )
}

/// The traffic mix: mostly candidates, every 20th message an offer (renegotiation).
pub(crate) fn traffic(to: &str, n: u64, stamp: u64) -> String {
    if n.is_multiple_of(20) {
        offer(to, stamp)
    } else {
        candidate(to, stamp)
    }
}

/// The send time carried in a relayed message.
pub(crate) fn stamp_of(text: &str) -> Option<u64> {
    let at = text.rfind("\"t\":")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Pairs of logged-in users with a call set up (offer and answer), so both servers relay
/// between them; `a` sends, `b` receives.
pub(crate) async fn pairs(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    count: usize,
) -> anyhow::Result<Vec<(Ws, Ws, String)>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (a_name, b_name) = (format!("a{i}"), format!("b{i}"));
        let mut a = connect(server.endpoint(0), tls, 2 * i).await?;
        let mut b = connect(server.endpoint(1), tls, 2 * i + 1).await?;
        login(&mut a, &a_name).await?;
        login(&mut b, &b_name).await?;
        a.send(Message::text(offer(&b_name, epoch_micros())))
            .await?;
        next_text(&mut b).await?;
        let answer = format!(
            r#"{{"type":"answer","answer":{{"type":"answer","sdp":"v=0"}},"otherUsername":"{a_name}"}}"#
        );
        b.send(Message::text(answer)).await?;
        next_text(&mut a).await?;
        out.push((a, b, b_name));
    }
    Ok(out)
}

pub(crate) fn epoch_of(at: Instant) -> u64 {
    let now = Instant::now();
    let epoch_now = epoch_micros();
    if at >= now {
        epoch_now + (at - now).as_micros() as u64
    } else {
        epoch_now.saturating_sub((now - at).as_micros() as u64)
    }
}

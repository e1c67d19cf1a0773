//! Twilio Media Streams: a WebSocket upgrade through callgate, frames relayed both ways.

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::{ws_echo, Callgate};

#[tokio::test]
async fn a_media_stream_is_relayed_both_ways() {
    // Echoes are prefixed so an echo can't be mistaken for a frame relayed back unchanged.
    let engine = ws_echo("echo:").await;
    let cg = Callgate::spawn("{}", &format!("http://{engine}")).await;
    let stream = TcpStream::connect(cg.addr).await.unwrap();
    let url = format!("ws://{}/twilio/media?CallSid=CA1", cg.addr);
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);

    let media = r#"{"event":"media","media":{"payload":"AAAA"}}"#;
    for i in 0..20 {
        ws.send(Message::Text(format!("{media}{i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::Text(format!("echo:{media}{i}")));
    }
    let audio = vec![0x7fu8; 160 * 50];
    ws.send(Message::Binary(audio.clone())).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data(), [b"echo:".as_slice(), &audio].concat());
    ws.close(None).await.unwrap();
}

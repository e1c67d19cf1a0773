//! The TwiML callgate answers with itself: a busy-tone `<Reject>`. Pure, rendered once.

use std::sync::LazyLock;

use bytes::Bytes;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};
use quick_xml::Writer;

/// `<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>`
pub fn reject_busy() -> Bytes {
    static DOC: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(render_reject("busy")));
    DOC.clone()
}

/// Renders a `<Reject>` document with the given reason ("busy" or "rejected").
fn render_reject(reason: &str) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(96));
    let events = [
        Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)),
        Event::Start(BytesStart::new("Response")),
        Event::Empty(BytesStart::new("Reject").with_attributes([("reason", reason)])),
        Event::End(BytesEnd::new("Response")),
    ];
    for event in events {
        w.write_event(event).expect("writing to a Vec cannot fail");
    }
    w.into_inner()
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_golden_document() {
        let golden = include_bytes!("../../fixtures/twiml/reject-busy.xml");
        assert_eq!(&super::reject_busy()[..], golden.trim_ascii_end());
    }
}

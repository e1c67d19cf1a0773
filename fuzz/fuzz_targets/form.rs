//! Twilio's form body (`webhook::twilio::parse_form`): never panics; what it accepts encodes
//! back to a form that parses to the same parameters, and yields call parameters.
#![no_main]

use callgate::webhook::twilio::{parse_form, CallParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = parse_form(data) else { return };
    let call = CallParams::from_params(&params);
    let _ = call.is_inbound_ringing();
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
        .finish();
    let again = parse_form(encoded.as_bytes()).expect("an encoded form parses");
    assert_eq!(params, again);
});

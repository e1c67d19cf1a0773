//! The routes file (`RouteTable::parse`): never panics; problems are single lines, at most 100
//! and a count; a table it accepts serialises to a file that parses back to the same table.
//! (That a gate URL's token never shows in a problem is tested in `routes::file`: here the
//! fuzzer moves the seeds' token into keys, which problems name by design.)
#![no_main]

use callgate::routes::{RouteTable, ValidateOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = ValidateOptions { allow_insecure_gates: data.first().is_some_and(|b| b & 1 == 1) };
    match RouteTable::parse(data, &opts) {
        Ok(table) => {
            let saved = serde_json::to_vec(&table).expect("a table serialises");
            let again = RouteTable::parse(&saved, &opts).expect("a saved table parses");
            assert!(again == table, "round trip changed the table");
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(e.problems.len() <= 101, "at most 100 problems and a count");
            for p in &e.problems {
                assert!(!p.contains('\n'), "one line per problem: {p:?}");
            }
        }
    }
});

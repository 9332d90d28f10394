//! Integration tests of weir-store: the guarded http(s) client against loopback servers started
//! by the tests.

mod http;

//! HTTP services: the embedded application hook ([`app`]).

pub mod app;

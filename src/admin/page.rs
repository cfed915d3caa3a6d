//! The status page served at `/`: one self-contained HTML document (no external assets, works
//! offline) that polls `/status` and draws the tables and charts in the browser.

pub const HTML: &str = include_str!("page.html");

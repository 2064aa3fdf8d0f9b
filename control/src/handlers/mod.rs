//! The API's handlers, by resource. Each turns a request into store calls, the rules
//! modules' decisions (`access`, `placement`, `enrollment`) and CA signatures; who calls,
//! what they sent and how a refusal is answered is `crate::auth`'s. Which handler serves
//! which route is the router's to say (`crate::router`).

pub mod account;
pub mod audit;
pub mod console;
pub mod dispatch;
pub mod enrollment;
pub mod events;
pub mod nodes;
pub mod sessions;
pub mod terminal;
pub mod users;

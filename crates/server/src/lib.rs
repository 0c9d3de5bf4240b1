//! thingd-server

//! thingd-net

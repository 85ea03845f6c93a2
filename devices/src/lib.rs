//! vhost-user device backends (block, net, console): filled in by the device issues.

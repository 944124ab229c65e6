//! Local APNs, FCM and OAuth stand-ins (being written).

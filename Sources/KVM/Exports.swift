/// KVM's calls throw `SystemCallError` and speak of `Errno`, both from
/// HostSystem and swift-system; a program that imports KVM can catch and read
/// them without importing those modules itself.
@_exported import HostSystem
@_exported import struct SystemPackage.Errno

"""The pure layer: the facts closewait deals in and the logic over them.

No BCC, no netlink, no /proc, no file read at import: everything here is a
function of its arguments, so it is tested in milliseconds. The kernel/ and
system/ layers translate what they read into these records (kernel/ turns
closewait.h's numbers into names before they get here).
"""

#!/bin/sh
# keepalived notify_backup and notify_fault: this host gives the LDAP service up.
#
# The reverse of notify-master.sh, as admins write it: stop slapd, unmount, demote. Like
# notify-master.sh it is the "glue" column of docs/node.md; keepalived does not wait for it.
#
# Usage (keepalived.conf):  notify_backup "/etc/rempart/glue/notify-backup.sh /etc/default/rempart-glue"
#                           notify_fault  "/etc/rempart/glue/notify-backup.sh /etc/default/rempart-glue"

. "${1:-/etc/default/rempart-glue}"
exec >>"$LOG" 2>&1
echo "$(date +%T.%N) notify_backup/fault: stopping the service"

# As `systemctl stop slapd`: signal it and wait until it is gone.
pid=$(cat "$SLAPD_PID" 2>/dev/null)
if [ -n "$pid" ] && kill "$pid"; then
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
fi

umount "$MOUNT_POINT"
[ -s "$LOOP_FILE" ] && losetup -d "$(cat "$LOOP_FILE")" && rm -f "$LOOP_FILE"
# nbdfuse + loop stand in for DRBD's /dev/drbd0 here (no nbd kernel module); the two loops below
# make releasing them as synchronous as unmounting /dev/drbd0 is, so that the demote does not
# find nbdfuse still connected. The loop device lets go of nbdfuse's file asynchronously: retry the
# FUSE unmount for a while, then wait for nbdfuse to exit.
i=0
while mountpoint -q "$FUSE_DIR" && [ $i -lt 50 ]; do
  fusermount3 -u "$FUSE_DIR" 2>/dev/null || sleep 0.1
  i=$((i + 1))
done
pid=$(cat "$NBDFUSE_PID" 2>/dev/null)
if [ -n "$pid" ]; then
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  rm -f "$NBDFUSE_PID"
fi

rempart-repl secondary --run-dir "$REPL_RUN"
echo "$(date +%T.%N) notify_backup/fault: done"

#!/bin/sh
# Configure a lab VM node once, from lab.* parameters on its kernel command line.
# Container nodes have the host's command line (no lab.* there) and skip this.
[ -e /etc/lab-configured ] && exit 0
H= IP= GW= DNS= MID=
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    lab.hostname=*) H=${kv#*=} ;;
    lab.ip=*) IP=${kv#*=} ;;
    lab.gw=*) GW=${kv#*=} ;;
    lab.dns=*) DNS=${kv#*=} ;;
    lab.machine_id=*) MID=${kv#*=} ;;
  esac
done
[ -n "$H" ] || exit 0
echo "$H" > /etc/hostname
hostname "$H"
printf '127.0.0.1 localhost\n%s %s\n' "${IP%/*}" "$H" > /etc/hosts
[ -n "$MID" ] && echo "$MID" > /etc/machine-id
rm -f /etc/resolv.conf
echo "nameserver $DNS" > /etc/resolv.conf
printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address %s\n    gateway %s\n' \
  "$IP" "$GW" > /etc/network/interfaces
ssh-keygen -A
mkdir -p /data01
echo 'LABEL=data01 /data01 ext4 defaults 0 2' >> /etc/fstab
mount /data01
# Under SELinux, what this script made gets the policy's labels (as a site's relabel would).
if command -v selinuxenabled >/dev/null && selinuxenabled; then
  restorecon -R /etc /data01 /root
fi
touch /etc/lab-configured

# shop worker: busybox only (no base image can be pulled on the test machines).
FROM scratch
COPY busybox /bin/busybox
COPY start.sh worker.sh /app/
COPY www/ /app/www/
ENV APP=worker PORT=8080
ENTRYPOINT ["/bin/busybox", "sh", "/app/start.sh"]

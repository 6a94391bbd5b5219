# shop api: busybox only (no base image can be pulled on the test machines).
FROM scratch
COPY busybox /bin/busybox
COPY start.sh worker.sh /app/
COPY www/ /app/www/
ENV APP=api PORT=5000
ENTRYPOINT ["/bin/busybox", "sh", "/app/start.sh"]

// One private endpoint of one service (a storage account's blob/queue/table, or a Key Vault) in the
// private-endpoint subnet, registered in its private DNS zone so the app resolves the public name to it.
param name string
param location string
param tags object
param subnetId string
@description('Resource id of the storage account or Key Vault.')
param targetId string
@allowed([
  'blob'
  'queue'
  'table'
  'vault'
])
param groupId string
param privateDnsZoneId string

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: name
        properties: {
          privateLinkServiceId: targetId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource dnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: groupId
        properties: {
          privateDnsZoneId: privateDnsZoneId
        }
      }
    ]
  }
}
